// One open conversation in this tab: the owner of its state and of the messages it draws.
//
// Invariants (this class owns them):
// - Events apply in id order, once: `lastId` is the newest applied; older or equal ids are skipped.
// - While the history loads, live events wait in `queued` and apply after it, in order.
// - Once `close()`d (the tab opened another conversation), nothing it started may draw any more:
//   every await re-checks `closed`, so a late history answer cannot land under another conversation.

import { button, element } from "./dom.js";
import { ConversationFeed } from "./feed.js";
import { StreamingMarkdown } from "./markdown.js";

const FINISH_NOTES = { cancelled: "Stopped", failed: "The answer failed", length: "Cut off at the length limit" };

export class GoneError extends Error {}

function newer(a, b) {
  if (!b) return true;
  const [x, y] = a.split("-").map(Number);
  const [u, v] = b.split("-").map(Number);
  return x > u || (x === u && y > v);
}

export class ConversationView {
  // hooks: onActive(responseId | null), onFirstMessage(content), onChange(), onState(state, leader),
  // onError(message), onGone(reason)
  constructor(id, ui, hooks) {
    this.id = id;
    this.ui = ui;
    this.hooks = hooks;
    this.lastId = "";
    this.loading = true;
    this.queued = [];
    this.active = null;
    this.answers = new Map(); // response id -> {article, md, note}
    this.users = new Map(); // message id -> article
    this.lastPrompt = "";
    this.closed = false;
    this.feed = new ConversationFeed(id, {
      onEvent: (type, raw, eventId) => this.onEvent(type, raw, eventId),
      onState: (state, leader) => { if (!this.closed) hooks.onState(state, leader); },
      cursor: () => this.lastId,
    });
  }

  // Load the history, then follow the stream. Throws GoneError if the conversation is not ours.
  async open() {
    try {
      await this.#loadHistory();
    } catch (err) {
      this.close();
      throw err;
    }
    if (this.closed) return;
    this.#drainQueue();
    this.feed.start();
  }

  close() {
    this.closed = true;
    this.feed.stop();
  }

  // A message this tab just posted: drawn at once, unless its event already was.
  posted(messageId, responseId, content) {
    if (this.loading || this.users.has(messageId)) return;
    this.#userMessage(messageId, content);
    this.#answer(responseId);
    this.#setActive(responseId);
  }

  // The text of a user message (for editing).
  userText(article) {
    return article.querySelector(".bubble")?.textContent ?? "";
  }

  text(responseId) {
    return this.answers.get(responseId)?.md.text;
  }

  onEvent(type, raw, id) {
    if (this.closed) return;
    if (this.loading) {
      this.queued.push([type, raw, id]);
      return;
    }
    if (type === "gone") {
      // Deleted, revoked, or never this browser's: stop following it.
      let reason = "not_found";
      try {
        reason = JSON.parse(raw).reason || reason;
      } catch {
        // keep the default
      }
      this.close();
      this.hooks.onGone(reason);
      return;
    }
    if (type === "reset") {
      // The history cannot continue from our cursor (trimmed, or lost by Redis): its id is the new
      // head, which may be older than what we saw. Start again from the history API.
      this.lastId = id;
      this.#reload();
      return;
    }
    if (id && !newer(id, this.lastId)) return; // seen already (history, or another tab's relay)
    if (type === "delta") {
      // A delta's data is its text; it belongs to the active answer (the latest one started).
      if (id) this.lastId = id;
      if (this.active) this.#answer(this.active).md.append(raw);
      this.hooks.onChange();
      return;
    }
    let data;
    try {
      data = JSON.parse(raw);
    } catch {
      return;
    }
    if (id) this.lastId = id;
    if (type === "user_message") {
      this.#userMessage(data.message_id, data.content);
      this.#answer(data.response_id);
      this.#setActive(data.response_id);
    } else if (type === "regenerate") {
      this.#answer(data.response_id, data.replaces);
      this.#setActive(data.response_id);
    } else if (type === "done") {
      this.#finish(this.#answer(data.response_id), data.finish_reason, data.error);
      if (this.active === data.response_id) this.#setActive(null);
    }
    this.hooks.onChange();
  }

  // -- loading ------------------------------------------------------------------------------------

  async #loadHistory() {
    const res = await fetch(`/api/conversations/${this.id}`, { credentials: "same-origin" });
    if (this.closed) return;
    if (res.status === 401) {
      throw new GoneError("Your access to this conversation expired: it was not opened for too long.");
    }
    if (res.status === 404) {
      throw new GoneError("This conversation does not exist (any more), or was not started in this browser.");
    }
    if (!res.ok) throw new Error(`Loading the conversation failed (${res.status}).`);
    const body = await res.json();
    if (this.closed) return;
    this.#clear();
    for (const m of body.messages) {
      if (m.role === "user") {
        this.#userMessage(m.id, m.content);
      } else {
        const entry = this.#answer(m.id, m.replaces);
        entry.md.append(m.content);
        if (m.id !== body.active_response_id) {
          this.#finish(entry, m.finish_reason || (m.status === "complete" ? "stop" : m.status), m.error);
        }
      }
    }
    this.lastId = body.last_event_id === "0-0" ? "" : body.last_event_id;
    this.#setActive(body.active_response_id);
  }

  async #reload() {
    this.loading = true;
    try {
      await this.#loadHistory();
    } catch (err) {
      if (!this.closed) this.hooks.onError(err.message);
    } finally {
      if (!this.closed) this.#drainQueue();
    }
  }

  #drainQueue() {
    this.loading = false;
    const queued = this.queued;
    this.queued = [];
    for (const args of queued) this.onEvent(...args);
  }

  // -- drawing ------------------------------------------------------------------------------------

  #clear() {
    for (const el of [...this.ui.log.querySelectorAll("article")]) el.remove();
    this.answers.clear();
    this.users.clear();
    this.lastPrompt = "";
    this.#setActive(null);
    this.ui.empty.hidden = false;
  }

  #userMessage(id, content) {
    if (this.users.has(id)) return;
    const article = element("article", "msg user");
    article.dataset.id = id;
    const edit = button("Edit", "edit-message", "Edit this message and send it again");
    article.append(element("h2", "sr-only", "You said:"), element("div", "bubble", content), edit);
    this.users.set(id, article);
    this.ui.log.append(article);
    this.lastPrompt = content;
    this.ui.empty.hidden = true;
    if (this.answers.size === 0 && this.users.size === 1) this.hooks.onFirstMessage(content);
  }

  // The answer `responseId`'s entry; a new version of `replaces` joins that answer's article.
  #answer(responseId, replaces) {
    let entry = this.answers.get(responseId);
    if (entry) return entry;
    const previous = replaces && this.answers.get(replaces);
    const body = element("div", "md");
    if (previous) {
      const { article, versions } = previous;
      article.insertBefore(body, article.querySelector(".msg-foot"));
      versions.push(responseId);
      entry = { article, body, md: new StreamingMarkdown(body), note: previous.note, versions };
      this.answers.set(responseId, entry);
      article.dataset.status = "generating";
      article.setAttribute("aria-busy", "true");
      previous.note.textContent = "";
      this.#show(entry);
      return entry;
    }
    const article = element("article", "msg assistant");
    article.dataset.status = "generating";
    article.setAttribute("aria-busy", "true");
    const foot = element("div", "msg-foot");
    const note = element("span", "finish-note");
    const pager = element("span", "versions");
    pager.hidden = true;
    pager.append(
      button("‹", "version-prev", "Show the previous version of this answer"),
      element("span", "version-label"),
      button("›", "version-next", "Show the next version of this answer"),
    );
    const copy = button("Copy", "copy-answer", "Copy this answer as markdown");
    const again = button("Regenerate", "regenerate", "Write this answer again (the versions are kept)");
    foot.append(pager, note, copy, again);
    article.append(element("h2", "sr-only", "Assistant said:"), body, foot);
    this.ui.log.append(article);
    this.ui.empty.hidden = true;
    entry = { article, body, md: new StreamingMarkdown(body), note, versions: [responseId] };
    this.answers.set(responseId, entry);
    this.#show(entry);
    return entry;
  }

  // Show `entry`'s version in its article (the others stay, hidden).
  #show(entry) {
    const { article, versions } = entry;
    const shown = versions.find((id) => this.answers.get(id) === entry);
    for (const id of versions) this.answers.get(id).body.hidden = id !== shown;
    article.dataset.responseId = shown;
    const pager = article.querySelector(".versions");
    pager.hidden = versions.length < 2;
    pager.querySelector(".version-label").textContent = `${versions.indexOf(shown) + 1}/${versions.length}`;
  }

  // The reader pages through an answer's versions (delta -1 or +1).
  step(article, delta) {
    const entry = this.answers.get(article.dataset.responseId);
    if (!entry) return;
    const at = entry.versions.indexOf(article.dataset.responseId) + delta;
    if (at >= 0 && at < entry.versions.length) this.#show(this.answers.get(entry.versions[at]));
  }

  // The response id of the newest version shown in `article` (what Regenerate replaces).
  newest(article) {
    const entry = this.answers.get(article.dataset.responseId);
    return entry ? entry.versions[entry.versions.length - 1] : undefined;
  }

  #finish(entry, reason, error) {
    if (entry.article.dataset.status !== "generating") return;
    entry.md.finish();
    entry.article.dataset.status = reason === "stop" || reason === "length" ? "complete" : reason;
    entry.article.dataset.finishReason = reason;
    entry.article.setAttribute("aria-busy", "false");
    const note = FINISH_NOTES[reason] || "";
    entry.note.textContent = error ? `${note}: ${error}` : note;
  }

  #setActive(responseId) {
    const was = this.active;
    this.active = responseId;
    this.hooks.onActive(responseId, was);
  }
}
