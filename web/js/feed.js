// Live events for every conversation this browser shows, over ONE connection for all its tabs.
//
// Browsers allow 6 HTTP/1.1 connections per host, so a stream per conversation (or per tab) hangs
// the 7th. One tab per browser holds the lock "streamfan:stream" (Web Locks) and, with it, the only
// EventSource: the node's multiplexed stream (/api/stream?c=<id>.<cursor>&...), which carries every
// conversation any tab follows. Tabs tell the leader what they follow (with their cursors) over a
// BroadcastChannel; the leader relays each event, named by its id line "<conversation>/<event id>".
// When the set changes, or the stream breaks, the leader reconnects with each conversation's
// cursor, and when the leader's tab closes another tab takes the lock and does the same: tabs apply
// events by id (each skips ids it has seen), so nothing is lost or doubled.
//
// Without Web Locks (an insecure origin) every tab streams on its own: one connection per tab.

const EVENT_TYPES = ["user_message", "regenerate", "delta", "done", "reset", "gone"];
const BACKOFF_FIRST_MS = 300;
const BACKOFF_MAX_MS = 15_000;
const REGROUP_MS = 40; // followers announced together reconnect once

function olderId(a, b) {
  if (!a) return true;
  if (!b) return false;
  const [x, y] = a.split("-").map(Number);
  const [u, v] = b.split("-").map(Number);
  return x < u || (x === u && y < v);
}

class BrowserStream {
  constructor() {
    this.tab = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    this.local = new Map(); // conversation id -> handlers of this tab
    this.leader = false;
    this.started = false;
    this.state = "connecting";
    // Leader only: conversation id -> {tabs: Set, cursor}
    this.wanted = new Map();
    this.source = null;
    this.timer = null;
    this.backoff = BACKOFF_FIRST_MS;
    this.channel = null; // opened by #start, closed on leaving
    this.release = null; // resolves the lock's promise: gives the lock up
    this.waiting = null; // aborts a lock request not granted yet
    window.addEventListener("online", () => { if (this.leader) this.#reconnectSoon(0); });
    window.addEventListener("pagehide", () => this.#leave());
    // A page restored from the back/forward cache has neither the lock nor a stream: it starts over.
    window.addEventListener("pageshow", (event) => { if (event.persisted) this.#rejoin(); });
  }

  follow(id, handlers) {
    this.local.set(id, handlers);
    this.#start();
    const cursor = handlers.cursor();
    if (this.leader) this.#want(this.tab, id, cursor);
    else this.channel.postMessage({ kind: "follow", tab: this.tab, id, cursor });
    handlers.onState(this.state, this.leader);
  }

  unfollow(id) {
    if (!this.local.delete(id)) return;
    if (this.leader) this.#unwant(this.tab, id);
    else if (this.channel) this.channel.postMessage({ kind: "unfollow", tab: this.tab, id });
  }

  #start() {
    if (this.started) return;
    this.started = true;
    this.channel = new BroadcastChannel("streamfan:stream");
    this.channel.onmessage = (message) => this.#onMessage(message.data);
    if (!navigator.locks) {
      this.#lead();
      return;
    }
    this.channel.postMessage({ kind: "hello", tab: this.tab }); // a leader answers with its state
    this.waiting = new AbortController(); // leaving withdraws the request
    navigator.locks
      .request("streamfan:stream", { signal: this.waiting.signal }, () => {
        this.waiting = null;
        this.#lead();
        return new Promise((resolve) => { this.release = resolve; });
      })
      .catch((err) => { if (err.name !== "AbortError") console.error("stream lock failed", err); });
  }

  #leave() {
    if (!this.started) return;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    if (this.release) this.release();
    if (this.waiting) this.waiting.abort();
    for (const id of this.local.keys()) this.channel.postMessage({ kind: "unfollow", tab: this.tab, id });
    // The page may live on in the back/forward cache: it no longer leads nor waits for the lock,
    // and hears nothing (a message to a cached page makes the browser drop it from the cache).
    this.channel.close();
    this.channel = null;
    this.source = null;
    this.release = null;
    this.waiting = null;
    this.leader = false;
    this.started = false;
    this.wanted.clear();
  }

  #rejoin() {
    if (this.local.size === 0) return; // the next follow() starts it
    this.#setState("connecting");
    this.#start();
    if (this.leader) return; // no Web Locks: #start led at once
    for (const [id, handlers] of this.local) {
      this.channel.postMessage({ kind: "follow", tab: this.tab, id, cursor: handlers.cursor() });
    }
  }

  // -- leader ---------------------------------------------------------------------------------------

  #lead() {
    this.leader = true;
    for (const [id, handlers] of this.local) this.#want(this.tab, id, handlers.cursor(), false);
    this.channel.postMessage({ kind: "leader", tab: this.tab }); // the others announce what they follow
    this.#reconnectSoon(0);
  }

  #want(tab, id, cursor, reconnect = true) {
    let entry = this.wanted.get(id);
    const fresh = !entry;
    if (!entry) {
      entry = { tabs: new Set(), cursor };
      this.wanted.set(id, entry);
    }
    entry.tabs.add(tab);
    // A tab behind the stream needs the events it missed: reconnect from its cursor.
    const behind = !fresh && olderId(cursor, entry.cursor);
    if (behind) entry.cursor = cursor;
    if (reconnect && (fresh || behind)) this.#reconnectSoon(REGROUP_MS);
  }

  #unwant(tab, id) {
    const entry = this.wanted.get(id);
    if (!entry) return;
    entry.tabs.delete(tab);
    if (entry.tabs.size === 0) {
      this.wanted.delete(id);
      this.#reconnectSoon(REGROUP_MS);
    }
  }

  #reconnectSoon(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#connect(), delay);
  }

  #connect() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    if (this.wanted.size === 0) {
      this.#setState("idle");
      return;
    }
    const query = [...this.wanted].map(([id, entry]) => `c=${id}.${entry.cursor || ""}`).join("&");
    const source = new EventSource(`/api/stream?${query}`);
    this.source = source;
    if (this.state !== "live") this.#setState("connecting");
    source.onopen = () => {
      this.backoff = BACKOFF_FIRST_MS;
      this.#setState("live");
    };
    source.onerror = () => {
      if (source !== this.source) return;
      // Reconnect ourselves, with every conversation's latest cursor (EventSource's own retry
      // would resend the cursors of the URL), with backoff. A refused stream (not a 200) may mean
      // a conversation is gone or the session expired: ask each conversation first.
      const refused = source.readyState === EventSource.CLOSED;
      source.close();
      this.source = null;
      this.#setState(navigator.onLine ? "reconnecting" : "offline");
      const delay = this.backoff * (0.75 + Math.random() * 0.5);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      if (refused) this.#probe().finally(() => this.#reconnectSoon(delay));
      else this.#reconnectSoon(delay);
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        if (source !== this.source) return;
        const slash = event.lastEventId.indexOf("/");
        if (slash < 0) return;
        const id = event.lastEventId.slice(0, slash);
        const eventId = event.lastEventId.slice(slash + 1);
        const entry = this.wanted.get(id);
        if (entry && eventId) entry.cursor = eventId;
        if (type === "gone") this.wanted.delete(id);
        this.#deliver(id, type, event.data, eventId);
        this.channel.postMessage({ kind: "event", id, type, data: event.data, eventId });
      });
    }
  }

  // After a refused stream: each conversation's history answers 404/401 if it is gone (or this
  // browser may no longer read it), and a readable one renews the session cookie on the way.
  async #probe() {
    clearTimeout(this.timer);
    await Promise.all([...this.wanted.keys()].map(async (id) => {
      let status = 0;
      try {
        status = (await fetch(`/api/conversations/${id}?limit=1`, { credentials: "same-origin" })).status;
      } catch {
        return; // the network: keep trying
      }
      if (status === 401 || status === 404) {
        this.wanted.delete(id);
        const data = JSON.stringify({ reason: status === 401 ? "expired" : "not_found" });
        this.#deliver(id, "gone", data, "");
        this.channel.postMessage({ kind: "event", id, type: "gone", data, eventId: "" });
      }
    }));
  }

  #setState(state) {
    this.state = state;
    for (const handlers of this.local.values()) handlers.onState(state, this.leader);
    if (this.leader) this.channel.postMessage({ kind: "state", state });
  }

  // -- every tab ------------------------------------------------------------------------------------

  #deliver(id, type, data, eventId) {
    const handlers = this.local.get(id);
    if (handlers) handlers.onEvent(type, data, eventId);
  }

  #onMessage(message) {
    switch (message.kind) {
      case "event":
        this.#deliver(message.id, message.type, message.data, message.eventId);
        break;
      case "state":
        if (!this.leader) {
          this.state = message.state;
          for (const handlers of this.local.values()) handlers.onState(message.state, false);
        }
        break;
      case "leader":
        if (!this.leader) {
          for (const [id, handlers] of this.local) {
            this.channel.postMessage({ kind: "follow", tab: this.tab, id, cursor: handlers.cursor() });
          }
        }
        break;
      case "hello":
        if (this.leader) this.channel.postMessage({ kind: "state", state: this.state });
        break;
      case "follow":
        if (this.leader) this.#want(message.tab, message.id, message.cursor);
        break;
      case "unfollow":
        if (this.leader) this.#unwant(message.tab, message.id);
        break;
      default:
        break;
    }
  }
}

let shared = null;

// One conversation's live events for this tab (the interface the page uses).
export class ConversationFeed {
  // handlers: onEvent(type, data, id), onState(state, leader), cursor() -> last applied event id
  constructor(conversationId, handlers) {
    this.id = conversationId;
    this.handlers = handlers;
  }

  start() {
    shared = shared || new BrowserStream();
    shared.follow(this.id, this.handlers);
  }

  stop() {
    if (shared) shared.unfollow(this.id);
  }
}
