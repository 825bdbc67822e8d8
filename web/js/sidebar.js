// The sidebar: this browser's conversations (localStorage), opened, renamed and deleted from here.

import { CONVERSATION_PATH, api } from "./api.js";
import {
  forgetConversation,
  listConversations,
  onConversationsChanged,
  renameConversation,
} from "./conversations.js";
import { button } from "./dom.js";


export class Sidebar {
  // page: currentId() -> id | undefined, open(id), blank(), setTitle(text), showError(message)
  constructor(ui, page) {
    this.ui = ui;
    this.page = page;
    ui.list.addEventListener("click", (event) => this.#onClick(event));
    onConversationsChanged(() => this.render());
    ui.toggle.addEventListener("click", () => {
      const open = document.body.classList.toggle("sidebar-open");
      ui.toggle.setAttribute("aria-expanded", String(open));
    });
    // On a phone the sidebar covers the page: a tap beside it (or Esc, in app.js) closes it.
    document.querySelector(".main").addEventListener("click", (event) => {
      if (document.body.classList.contains("sidebar-open") && !event.target.closest("#toggle-sidebar")) this.close();
    });
  }

  render() {
    const items = listConversations().map((c) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = `/c/${c.id}`;
      a.textContent = c.title || "New chat";
      if (c.id === this.page.currentId()) a.setAttribute("aria-current", "page");
      const rename = button("✎", "rename-chat", `Rename “${a.textContent}”`);
      rename.dataset.id = c.id;
      const remove = button("🗑", "delete-chat", `Delete “${a.textContent}”`);
      remove.dataset.id = c.id;
      li.append(a, rename, remove);
      return li;
    });
    this.ui.list.replaceChildren(...items);
  }

  close() {
    document.body.classList.remove("sidebar-open");
    this.ui.toggle.setAttribute("aria-expanded", "false");
  }

  #onClick(event) {
    const action = event.target.closest("button");
    if (action?.classList.contains("rename-chat")) {
      this.#rename(action.dataset.id);
      return;
    }
    if (action?.classList.contains("delete-chat")) {
      this.#delete(action.dataset.id);
      return;
    }
    const a = event.target.closest("a");
    if (!a || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    const id = a.pathname.match(CONVERSATION_PATH)?.[1];
    if (id && id !== this.page.currentId()) {
      history.pushState(null, "", a.pathname);
      this.page.open(id);
    }
    this.close();
  }

  #rename(id) {
    const entry = listConversations().find((c) => c.id === id);
    const title = window.prompt("Rename the conversation", entry?.title || "");
    if (title === null || !title.trim()) return;
    renameConversation(id, title);
    this.render();
    if (this.page.currentId() === id) this.page.setTitle(title);
  }

  async #delete(id) {
    if (!window.confirm("Delete this conversation? It cannot be undone.")) return;
    try {
      await api(`/api/conversations/${id}`, undefined, {}, "DELETE");
    } catch (err) {
      if (err.code !== "not_found" && err.code !== "token_expired") {
        this.page.showError(err.message);
        return;
      }
    }
    forgetConversation(id);
    if (this.page.currentId() === id) {
      history.pushState(null, "", "/");
      this.page.blank();
    }
    this.render();
  }
}
