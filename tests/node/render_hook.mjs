// Renders a React hook module as a browser page would, then chats through it; prints one JSON line.
//   node render_hook.mjs <page url> <module exporting useStreamfanChat> <text>
// React gets a page's globals (window, document: happy-dom); fetch and web streams stay Node's own
// (the AI SDK pipes responses through them), resolving relative URLs against the page as a browser does.
import { GlobalRegistrator } from "@happy-dom/global-registrator";
import { pathToFileURL } from "node:url";

const [page, module, text] = process.argv.slice(2);
const own = Object.fromEntries(
  ["fetch", "ReadableStream", "WritableStream", "TransformStream", "TextDecoderStream", "TextEncoderStream",
   "Response", "Request", "Headers", "AbortController", "AbortSignal"].map((name) => [name, globalThis[name]]),
);
GlobalRegistrator.register({ url: page });
Object.assign(globalThis, own);
globalThis.fetch = (input, init) =>
  own.fetch(typeof input === "string" ? new URL(input, globalThis.location.href) : input, init);

const React = await import("react");
const { createRoot } = await import("react-dom/client");
const { useStreamfanChat } = await import(pathToFileURL(module).href);

let chat = null;
function Probe() {
  chat = useStreamfanChat();
  return null;
}
const root = createRoot(document.createElement("div"));
root.render(React.createElement(Probe));
const until = async (ready, ms = 20000) => {
  const deadline = Date.now() + ms;
  while (!ready() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
};
await until(() => chat !== null && chat.status === "ready");
await chat.sendMessage({ text });
await until(() => chat.status === "ready" && chat.messages.at(-1)?.role === "assistant");
const last = chat.messages.at(-1);
const said = (last?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
console.log(JSON.stringify({ status: chat.status, role: last?.role, text: said, error: chat.error ? String(chat.error) : null }));
process.exit(0);
