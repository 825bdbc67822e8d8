// streamfan's chat page: conversations, streaming answers, one shared stream per conversation.
"use strict";

import { button, element } from "./dom.js";
import { ConversationFeed } from "./feed.js";
import { StreamingMarkdown } from "./markdown.js";
import { forgetConversation, listConversations, onConversationsChanged, rememberConversation } from "./conversations.js";

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("log"), empty: $("empty"), input: $("input"), send: $("send"), stop: $("stop"),
  composer: $("composer"), status: $("status"), connection: $("connection"), connectionLabel: $("connection-label"),
  error: $("error"), jump: $("jump"), list: $("conversation-list"), newChat: $("new-chat"),
  sidebar: $("sidebar"), toggle: $("toggle-sidebar"), title: $("title"),
};

const STATE_LABELS = {
  idle: "Ready", connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", offline: "Offline",
};
const FINISH_NOTES = { cancelled: "Stopped", failed: "The answer failed", length: "Cut off at the length limit" };
const ID_PATH = /^\/c\/([A-Za-z0-9_-]{16,64})$/;

const session = {
  id: null,          // conversation id
  feed: null,
  lastId: "",        // the newest event applied in this tab
  loading: false,    // a history load is in progress: events wait in `queued`
  queued: [],
  active: null,      // response id being generated
  answers: new Map(),  // response id -> {article, md}
  users: new Map(),    // message id -> article
  lastPrompt: "",
  stick: true,         // the reader is at the bottom
};

// -- event ids ------------------------------------------------------------------------------------

function newer(a, b) {
  if (!b) return true;
  const [x, y] = a.split("-").map(Number);
  const [u, v] = b.split("-").map(Number);
  return x > u || (x === u && y > v);
}

// -- rendering ------------------------------------------------------------------------------------

function userMessage(id, content) {
  let article = session.users.get(id);
  if (!article) {
    article = document.createElement("article");
    article.className = "msg user";
    article.dataset.id = id;
    const bubble = element("div", "bubble", content);
    const label = element("h2", "sr-only", "You said:");
    article.append(label, bubble);
    session.users.set(id, article);
    ui.log.append(article);
    session.lastPrompt = content;
    ui.empty.hidden = true;
    if (session.answers.size === 0 && session.users.size === 1) {
      rememberConversation(session.id, content.slice(0, 80));
      renderSidebar();
      setTitle(content);
    }
  }
  return article;
}

function answer(responseId) {
  let entry = session.answers.get(responseId);
  if (!entry) {
    const article = element("article", "msg assistant");
    article.dataset.responseId = responseId;
    article.dataset.status = "generating";
    article.setAttribute("aria-busy", "true");
    const label = element("h2", "sr-only", "Assistant said:");
    const body = element("div", "md");
    const foot = element("div", "msg-foot");
    const note = element("span", "finish-note");
    const copy = button("Copy", "copy-answer", "Copy this answer as markdown");
    const again = button("Regenerate", "regenerate", "Ask for this answer again");
    foot.append(note, copy, again);
    article.append(label, body, foot);
    ui.log.append(article);
    ui.empty.hidden = true;
    entry = { article, md: new StreamingMarkdown(body), note };
    session.answers.set(responseId, entry);
  }
  return entry;
}

function finishAnswer(entry, reason) {
  if (entry.article.dataset.status !== "generating") return;
  entry.md.finish();
  entry.article.dataset.status = reason === "stop" || reason === "length" ? "complete" : reason;
  entry.article.dataset.finishReason = reason;
  entry.article.setAttribute("aria-busy", "false");
  entry.note.textContent = FINISH_NOTES[reason] || "";
}

function setGenerating(responseId) {
  const was = session.active;
  session.active = responseId;
  ui.send.hidden = !!responseId;
  ui.stop.hidden = !responseId;
  ui.log.classList.toggle("generating", !!responseId);
  if (responseId && !was) ui.status.textContent = "Generating…";
  if (!responseId && was) ui.status.textContent = "Response complete";
}

function setTitle(text) {
  const title = text ? text.replace(/\s+/g, " ").trim().slice(0, 60) : "streamfan";
  ui.title.textContent = title || "streamfan";
  document.title = text ? `${title} · streamfan` : "streamfan";
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

// -- scrolling ------------------------------------------------------------------------------------

function atBottom() {
  return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 48;
}

function followOutput() {
  if (session.stick) {
    ui.log.scrollTop = ui.log.scrollHeight;
    ui.jump.hidden = true;
  } else {
    ui.jump.hidden = false;
  }
}

ui.log.addEventListener("scroll", () => {
  session.stick = atBottom();
  if (session.stick) ui.jump.hidden = true;
}, { passive: true });
ui.jump.addEventListener("click", () => {
  session.stick = true;
  followOutput();
  ui.input.focus();
});

// -- events ---------------------------------------------------------------------------------------

function onEvent(type, raw, id) {
  if (session.loading) {
    session.queued.push([type, raw, id]);
    return;
  }
  if (type === "reset") {
    // The history cannot continue from our cursor (trimmed, or lost by Redis): its id is the new
    // head, which may be older than what we saw. Start again from the history API.
    session.lastId = id;
    reload();
    return;
  }
  if (id && !newer(id, session.lastId)) return; // seen already (history, or another tab's relay)
  let data;
  try {
    data = JSON.parse(raw);
  } catch {
    return;
  }
  if (id) session.lastId = id;
  if (type === "user_message") {
    userMessage(data.message_id, data.content);
    answer(data.response_id);
    setGenerating(data.response_id);
  } else if (type === "delta") {
    const entry = answer(data.response_id);
    entry.md.append(data.text);
    if (session.active !== data.response_id) setGenerating(data.response_id);
  } else if (type === "done") {
    finishAnswer(answer(data.response_id), data.finish_reason);
    if (session.active === data.response_id) setGenerating(null);
  }
  followOutput();
}

function onState(state, leader) {
  ui.connection.dataset.state = state;
  ui.connectionLabel.textContent = STATE_LABELS[state] || state;
  ui.connection.title = state === "live" && !leader ? "Live, through another tab's stream" : "";
}

// -- loading a conversation -----------------------------------------------------------------------

function clearLog() {
  for (const el of [...ui.log.querySelectorAll("article")]) el.remove();
  session.answers.clear();
  session.users.clear();
  session.lastId = "";
  session.lastPrompt = "";
  setGenerating(null);
  ui.status.textContent = "";
  ui.empty.hidden = false;
}

async function loadHistory() {
  const res = await fetch(`/api/conversations/${session.id}`, { credentials: "same-origin" });
  if (res.status === 401 || res.status === 404) {
    const err = new Error("This conversation does not exist, or was not started in this browser.");
    err.gone = true;
    throw err;
  }
  if (!res.ok) throw new Error(`Loading the conversation failed (${res.status}).`);
  const body = await res.json();
  clearLog();
  for (const m of body.messages) {
    if (m.role === "user") {
      userMessage(m.id, m.content);
    } else {
      const entry = answer(m.id);
      entry.md.append(m.content);
      if (m.id !== body.active_response_id) {
        finishAnswer(entry, m.finish_reason || (m.status === "complete" ? "stop" : m.status));
      }
    }
  }
  if (!body.messages.length) setTitle("");
  session.lastId = body.last_event_id === "0-0" ? "" : body.last_event_id;
  setGenerating(body.active_response_id);
  session.stick = true;
  ui.log.scrollTop = ui.log.scrollHeight;
}

function drainQueue() {
  session.loading = false;
  const queued = session.queued;
  session.queued = [];
  for (const args of queued) onEvent(...args);
}

async function reload() {
  session.loading = true;
  try {
    await loadHistory();
  } catch (err) {
    showError(err.message);
  } finally {
    drainQueue();
  }
}

async function openConversation(id) {
  if (session.feed) session.feed.stop();
  session.feed = null;
  session.id = id;
  session.loading = true;
  session.queued = [];
  showError("");
  clearLog();
  renderSidebar();
  onState("connecting", false);
  const feed = new ConversationFeed(id, { onEvent, onState, cursor: () => session.lastId });
  session.feed = feed;
  try {
    await loadHistory();
  } catch (err) {
    session.loading = false;
    feed.stop();
    if (session.feed === feed) session.feed = null;
    onState("idle", false);
    showError(err.message);
    if (err.gone) {
      forgetConversation(id);
      renderSidebar();
    }
    return;
  }
  if (session.feed !== feed) return; // another conversation was opened meanwhile
  drainQueue();
  rememberConversation(id);
  renderSidebar();
  feed.start();
}

function blankConversation() {
  if (session.feed) session.feed.stop();
  session.feed = null;
  session.id = null;
  clearLog();
  setTitle("");
  onState("idle", false);
  renderSidebar();
  ui.input.focus();
}

// -- actions --------------------------------------------------------------------------------------

async function api(path, body) {
  const res = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let json = {};
  try {
    json = await res.json();
  } catch {
    // an empty or non-JSON body (a balancer's error page)
  }
  if (!res.ok) throw new Error(json.message || `The server answered ${res.status}.`);
  return json;
}

async function send(content) {
  if (!content.trim() || session.active) return;
  showError("");
  ui.send.disabled = true;
  try {
    if (!session.id) {
      const created = await api("/api/conversations", {});
      history.pushState(null, "", `/c/${created.id}`);
      rememberConversation(created.id, content.slice(0, 80));
      await openConversation(created.id);
    }
    const posted = await api(`/api/conversations/${session.id}/messages`, { content });
    ui.input.value = "";
    autoGrow();
    if (!session.loading && !session.users.has(posted.message_id)) {
      userMessage(posted.message_id, content);
      answer(posted.response_id);
      setGenerating(posted.response_id);
    }
    session.stick = true;
    followOutput();
  } catch (err) {
    showError(err.message);
  } finally {
    ui.send.disabled = false;
  }
}

async function stop() {
  if (!session.active || !session.id) return;
  try {
    await api(`/api/conversations/${session.id}/cancel`, { response_id: session.active });
  } catch (err) {
    showError(err.message);
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send(ui.input.value);
});
ui.input.addEventListener("keydown", (event) => {
  // Never send while an input method is composing (Japanese, Chinese, Korean...).
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
    closeSidebar();
    return;
  }
  if (event.key === "Escape" && session.active) {
    event.preventDefault();
    stop();
  }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", () => {
  history.pushState(null, "", "/");
  blankConversation();
  closeSidebar();
});

function autoGrow() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}
ui.input.addEventListener("input", autoGrow);

ui.log.addEventListener("click", async (event) => {
  const target = event.target.closest("button");
  if (!target) return;
  if (target.classList.contains("copy-code")) {
    const code = target.closest(".code-block").querySelector("code").textContent;
    await copyText(target, code);
  } else if (target.classList.contains("copy-answer")) {
    const entry = session.answers.get(target.closest("article").dataset.responseId);
    if (entry) await copyText(target, entry.md.text);
  } else if (target.classList.contains("regenerate")) {
    if (session.lastPrompt) send(session.lastPrompt);
  }
});

async function copyText(buttonEl, text) {
  const label = buttonEl.textContent;
  try {
    await navigator.clipboard.writeText(text);
    buttonEl.textContent = "Copied";
  } catch {
    buttonEl.textContent = "Copy failed";
  }
  setTimeout(() => { buttonEl.textContent = label; }, 1500);
}

// -- sidebar --------------------------------------------------------------------------------------

function renderSidebar() {
  const items = listConversations().map((c) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/c/${c.id}`;
    a.textContent = c.title || "New chat";
    if (c.id === session.id) a.setAttribute("aria-current", "page");
    li.append(a);
    return li;
  });
  ui.list.replaceChildren(...items);
}

ui.list.addEventListener("click", (event) => {
  const a = event.target.closest("a");
  if (!a || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  const id = a.pathname.match(ID_PATH)?.[1];
  if (id && id !== session.id) {
    history.pushState(null, "", a.pathname);
    openConversation(id);
  }
  closeSidebar();
});
onConversationsChanged(renderSidebar);

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  ui.toggle.setAttribute("aria-expanded", "false");
}
ui.toggle.addEventListener("click", () => {
  const open = document.body.classList.toggle("sidebar-open");
  ui.toggle.setAttribute("aria-expanded", String(open));
});
// On a phone the sidebar covers the page: a tap beside it or Esc closes it.
document.querySelector(".main").addEventListener("click", (event) => {
  if (document.body.classList.contains("sidebar-open") && !event.target.closest("#toggle-sidebar")) closeSidebar();
});

// -- start ----------------------------------------------------------------------------------------

function route() {
  const match = location.pathname.match(ID_PATH);
  if (match) openConversation(match[1]);
  else blankConversation();
}
window.addEventListener("popstate", route);
window.addEventListener("pagehide", () => { if (session.feed) session.feed.stop(); });
route();
