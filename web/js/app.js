// streamfan's chat page: conversations, streaming answers, one shared stream per conversation.
"use strict";

import { CONVERSATION_PATH, api } from "./api.js";
import { ConversationView, GoneError } from "./conversation_view.js";
import { forgetConversation, listConversations, plainTitle, rememberConversation } from "./conversations.js";
import { Sidebar } from "./sidebar.js";

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

// The open conversation (a ConversationView owns its state), and whether the reader is at the bottom.
let current = null;
let stick = true;

function onActive(responseId, was) {
  ui.send.hidden = !!responseId;
  ui.stop.hidden = !responseId;
  ui.log.classList.toggle("generating", !!responseId);
  if (responseId && !was) ui.status.textContent = "Generating…";
  if (!responseId && was) ui.status.textContent = "Response complete";
}

function setTitle(text) {
  const title = text ? plainTitle(text).slice(0, 60) : "streamfan";
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
  if (stick) {
    ui.log.scrollTop = ui.log.scrollHeight;
    ui.jump.hidden = true;
  } else {
    ui.jump.hidden = false;
  }
}

ui.log.addEventListener("scroll", () => {
  stick = atBottom();
  if (stick) ui.jump.hidden = true;
}, { passive: true });
ui.jump.addEventListener("click", () => {
  stick = true;
  followOutput();
  ui.input.focus();
});

function onState(state, leader) {
  ui.connection.dataset.state = state;
  ui.connectionLabel.textContent = STATE_LABELS[state] || state;
  ui.connection.title = state === "live" && !leader ? "Live, through another tab's stream" : "";
}

// -- opening a conversation -----------------------------------------------------------------------

function clearLog() {
  for (const el of [...ui.log.querySelectorAll("article")]) el.remove();
  onActive(null, null);
  ui.status.textContent = "";
  ui.empty.hidden = false;
}

async function openConversation(id) {
  if (current) current.close();
  showError("");
  clearLog();
  const view = new ConversationView(id, ui, {
    onActive,
    onState,
    onChange: followOutput,
    onError: showError,
    onGone: (reason) => {
      if (view !== current) return;
      current = null;
      onActive(null, null);
      onState("idle", false);
      showError(
        reason === "expired"
          ? "Your access to this conversation expired. Send a message to start a new one."
          : "This conversation does not exist any more. Send a message to start a new one.",
      );
      forgetConversation(id);
      renderSidebar();
    },
    onFirstMessage: (content) => {
      rememberConversation(id, content);
      renderSidebar();
      setTitle(listConversations().find((c) => c.id === id)?.title || content);
    },
  });
  current = view;
  renderSidebar();
  onState("connecting", false);
  try {
    await view.open();
  } catch (err) {
    if (view !== current) return;
    current = null;
    onState("idle", false);
    showError(err.message);
    if (err instanceof GoneError) {
      forgetConversation(id);
      renderSidebar();
    }
    return;
  }
  if (view !== current) return; // another conversation was opened meanwhile
  if (!view.users.size) setTitle("");
  stick = true;
  ui.log.scrollTop = ui.log.scrollHeight;
  rememberConversation(id);
  renderSidebar();
}

function blankConversation() {
  if (current) current.close();
  current = null;
  clearLog();
  setTitle("");
  onState("idle", false);
  renderSidebar();
  ui.input.focus();
}

// -- actions --------------------------------------------------------------------------------------

async function send(content) {
  if (!content.trim() || current?.active) return;
  showError("");
  ui.send.disabled = true;
  try {
    if (!current) {
      const created = await api("/api/conversations", {});
      history.pushState(null, "", `/c/${created.id}`);
      rememberConversation(created.id, content);
      await openConversation(created.id);
    }
    const view = current;
    // One key per message: a retry after a lost reply is answered with the first reply.
    const key = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    const posted = await api(`/api/conversations/${view.id}/messages`, { content }, { "Idempotency-Key": key });
    ui.input.value = "";
    autoGrow();
    if (view === current) view.posted(posted.message_id, posted.response_id, content);
    stick = true;
    followOutput();
  } catch (err) {
    showError(err.message);
  } finally {
    ui.send.disabled = false;
  }
}

// A new version of the last answer, for the same message (the versions stay, 1/2, 2/2...).
async function regenerate(article) {
  const view = current;
  if (!view || view.active) return;
  showError("");
  try {
    await api(`/api/conversations/${view.id}/regenerate`, { response_id: view.newest(article) });
  } catch (err) {
    showError(err.code === "not_last" ? "Only the last answer can be written again." : err.message);
  }
}

async function stop() {
  if (!current?.active) return;
  try {
    await api(`/api/conversations/${current.id}/cancel`, { response_id: current.active });
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
  if (event.key === "Escape" && current?.active) {
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
    const text = current?.text(target.closest("article").dataset.responseId);
    if (text !== undefined) await copyText(target, text);
  } else if (target.classList.contains("edit-message")) {
    // Edit and resend: the message comes back to the composer; sending it asks again.
    ui.input.value = current?.userText(target.closest("article")) ?? "";
    autoGrow();
    ui.input.focus();
  } else if (target.classList.contains("regenerate")) {
    regenerate(target.closest("article"));
  } else if (target.classList.contains("version-prev") || target.classList.contains("version-next")) {
    current?.step(target.closest("article"), target.classList.contains("version-prev") ? -1 : 1);
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

const sidebar = new Sidebar(ui, {
  currentId: () => current?.id,
  open: (id) => openConversation(id),
  blank: () => blankConversation(),
  setTitle,
  showError,
});
const renderSidebar = () => sidebar.render();
const closeSidebar = () => sidebar.close();

// -- start ----------------------------------------------------------------------------------------

function route() {
  const match = location.pathname.match(CONVERSATION_PATH);
  if (match) {
    openConversation(match[1]);
  } else {
    blankConversation();
    if (location.pathname.startsWith("/c/")) {
      showError("This link is not a conversation's address. Start a new conversation below.");
    }
  }
}
window.addEventListener("popstate", route);
window.addEventListener("pagehide", () => { if (current) current.close(); });
// Restored from the back/forward cache: the view was closed on leaving, so open it again (the
// history brings what happened meanwhile).
window.addEventListener("pageshow", (event) => { if (event.persisted) route(); });
route();
