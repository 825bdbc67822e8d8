// Drives a streamfan node with the clients people already use; prints one JSON line of results.
//   node clients.mjs <base url> <api key> <chat id> <text>
import { DefaultChatTransport, readUIMessageStream } from "ai";
import OpenAI from "openai";

const [base, key, chatId, text] = process.argv.slice(2);

async function lastMessage(stream) {
  let last = null;
  for await (const message of readUIMessageStream({ stream })) last = message;
  return last;
}

const textOf = (message) => (message?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");

// The official JS SDK, streamed.
const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: key });
let streamed = "";
const completion = await openai.chat.completions.create({
  model: "streamfan",
  messages: [{ role: "user", content: text }],
  stream: true,
});
for await (const chunk of completion) streamed += chunk.choices[0]?.delta?.content ?? "";

// The AI SDK's chat transport (what useChat uses), then its resume.
const transport = new DefaultChatTransport({ api: `${base}/api/chat`, headers: { Authorization: `Bearer ${key}` } });
const sent = await transport.sendMessages({
  chatId,
  messages: [{ id: "m1", role: "user", parts: [{ type: "text", text }] }],
  trigger: "submit-message",
  messageId: undefined,
  abortSignal: undefined,
});
const answer = await lastMessage(sent);
const resumed = await transport.reconnectToStream({ chatId });

// As a browser uses it: its chat's own credential, never the server-wide key.
const created = await (await fetch(`${base}/api/conversations`, { method: "POST" })).json();
const ownTransport = new DefaultChatTransport({
  api: `${base}/api/chat`,
  headers: { Authorization: `Bearer ${created.token}` },
});
const own = await lastMessage(
  await ownTransport.sendMessages({
    chatId: created.id,
    messages: [{ id: "b1", role: "user", parts: [{ type: "text", text }] }],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  }),
);
let otherChatRefused = false;
try {
  await ownTransport.reconnectToStream({ chatId: chatId });  // a chat this token does not open
} catch {
  otherChatRefused = true;
}

console.log(
  JSON.stringify({
    openai: streamed,
    chat: textOf(answer),
    resumedWhenIdle: resumed === null,
    browserChat: textOf(own),
    otherChatRefused,
  }),
);
