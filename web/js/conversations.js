// The sidebar's list of conversations, kept in this browser only (localStorage).
// Tokens are not stored here: the server's HttpOnly cookie, scoped to each conversation, holds them.

const KEY = "streamfan.conversations";
const MAX = 200;

export function listConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list.filter((c) => c && typeof c.id === "string") : [];
  } catch {
    return [];
  }
}

function save(list) {
  try {
    localStorage.setItem(KEY, JSON.stringify(list.slice(0, MAX)));
  } catch {
    // storage full or disabled: the sidebar just forgets
  }
}

// A conversation's title from its first message: plain words, no markdown, one short line.
export function plainTitle(text) {
  return text
    .replace(/```[\s\S]*?(```|$)/g, " ")
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/^[ \t]{0,3}(#{1,6}|>|[-*+]|\d+[.)])[ \t]+/gm, "")
    .replace(/[*_~`]+/g, "")
    .replace(/\s+/g, " ")
    .trim()
    .slice(0, 80);
}

// Keep the conversation at the top of the list; its title is set once (or renamed), never replaced.
export function rememberConversation(id, title) {
  const list = listConversations();
  const existing = list.find((c) => c.id === id);
  const entry = { id, title: existing?.title || (title && plainTitle(title)) || "New chat", updated: Date.now() };
  save([entry, ...list.filter((c) => c.id !== id)]);
}

export function renameConversation(id, title) {
  const list = listConversations();
  const entry = list.find((c) => c.id === id);
  if (!entry) return;
  entry.title = plainTitle(title) || entry.title;
  save(list);
}

export function forgetConversation(id) {
  save(listConversations().filter((c) => c.id !== id));
}

// Tabs keep their sidebars in step through the storage event.
export function onConversationsChanged(callback) {
  window.addEventListener("storage", (event) => { if (event.key === KEY) callback(); });
}
