// streamfan chat page: one EventSource per conversation, resumable, text rendered with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), send = $("send"), stop = $("stop"), state = $("state");
let conversationId = null, source = null, lastId = "", floor = "", activeResponse = null, retryDelay = 500;
const bubbles = new Map();

const idKey = (id) => id.split("-").map(Number);
const after = (a, b) => { if (!b) return true; const [x, y] = idKey(a), [u, v] = idKey(b); return x > u || (x === u && y > v); };

function bubble(id, role) {
  let el = bubbles.get(id);
  if (!el) {
    el = document.createElement("div");
    el.className = `msg ${role}`;
    bubbles.set(id, el);
    log.append(el);
  }
  return el;
}

function scrollIfAtBottom(wasAtBottom) { if (wasAtBottom) log.scrollTop = log.scrollHeight; }
function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }

function setGenerating(responseId) {
  activeResponse = responseId;
  send.hidden = !!responseId;
  stop.hidden = !responseId;
  $("announce").textContent = responseId ? "Generating…" : "Response complete";
}

async function loadSnapshot() {
  const res = await fetch(`/api/conversations/${conversationId}`, { credentials: "same-origin" });
  if (!res.ok) throw new Error(`history: ${res.status}`);
  const body = await res.json();
  log.replaceChildren(); bubbles.clear();
  for (const m of body.messages) {
    const el = bubble(m.id, m.role);
    el.textContent = m.content;
    el.classList.toggle("generating", m.role === "assistant" && !m.finish_reason);
  }
  floor = body.last_event_id;  // events up to here are in the snapshot
  lastId = body.last_event_id;
  setGenerating(body.active_response_id);
  log.scrollTop = log.scrollHeight;
}

function connect() {
  if (source) source.close();
  const query = lastId ? `?last_event_id=${encodeURIComponent(lastId)}` : "";
  source = new EventSource(`/api/conversations/${conversationId}/events${query}`);
  state.textContent = "connecting";
  source.onopen = () => { state.textContent = "live"; retryDelay = 500; };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {  // a non-200: the browser gave up, we do not
      state.textContent = navigator.onLine ? "reconnecting" : "offline";
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    } else {
      state.textContent = "reconnecting";
    }
  };
  const handle = (type) => (e) => {
    if (e.lastEventId && !after(e.lastEventId, floor)) return;  // already in the snapshot
    if (e.lastEventId) lastId = e.lastEventId;
    const data = JSON.parse(e.data), wasAtBottom = atBottom();
    if (type === "user_message") {
      bubble(data.message_id, "user").textContent = data.content;
      bubble(data.response_id, "assistant").classList.add("generating");
      setGenerating(data.response_id);
    } else if (type === "delta") {
      const el = bubble(data.response_id, "assistant");
      el.classList.add("generating");
      el.append(document.createTextNode(data.text));
    } else if (type === "done") {
      bubble(data.response_id, "assistant").classList.remove("generating");
      setGenerating(null);
    }
    scrollIfAtBottom(wasAtBottom);
  };
  for (const type of ["user_message", "delta", "done"]) source.addEventListener(type, handle(type));
  source.addEventListener("reset", async (e) => { lastId = e.lastEventId; await loadSnapshot(); });
}

async function open(id) {
  conversationId = id;
  await loadSnapshot();
  connect();
}

async function newConversation() {
  const res = await fetch("/api/conversations", { method: "POST", credentials: "same-origin" });
  const body = await res.json();
  history.pushState(null, "", `/c/${body.id}`);
  await open(body.id);
}

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const content = input.value;
  if (!content.trim() || activeResponse) return;
  const res = await fetch(`/api/conversations/${conversationId}/messages`, {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ content }),
  });
  if (res.ok) input.value = "";
  else state.textContent = (await res.json()).message;
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  if (e.key === "Escape" && activeResponse) stop.click();
});
stop.addEventListener("click", () => fetch(`/api/conversations/${conversationId}/cancel`, {
  method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: "{}",
}));
$("new").addEventListener("click", newConversation);

const match = location.pathname.match(/^\/c\/([A-Za-z0-9_-]{16,64})$/);
(match ? open(match[1]) : newConversation()).catch((err) => { state.textContent = String(err); });
