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

export function rememberConversation(id, title) {
  const list = listConversations();
  const existing = list.find((c) => c.id === id);
  const entry = { id, title: title || existing?.title || "New chat", updated: Date.now() };
  save([entry, ...list.filter((c) => c.id !== id)]);
}

export function forgetConversation(id) {
  save(listConversations().filter((c) => c.id !== id));
}

// Tabs keep their sidebars in step through the storage event.
export function onConversationsChanged(callback) {
  window.addEventListener("storage", (event) => { if (event.key === KEY) callback(); });
}
