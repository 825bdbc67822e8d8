// One conversation's live events for this tab, with one stream per browser, not per tab.
//
// Browsers allow 6 HTTP/1.1 connections per host, so one EventSource per tab hangs the 7th tab. The
// tabs of a conversation elect a leader with the Web Locks API: the lock holder alone opens the
// stream and relays every event over a BroadcastChannel; when it closes, the lock passes to another
// tab, which resumes the stream from its own last event id. Tabs apply events by id (each tab skips
// ids it has seen), so a handover can neither lose nor double anything.
//
// The leader reconnects by itself: EventSource retries network errors, and after a non-200 answer
// (where EventSource gives up for good) this code retries with backoff, passing its cursor.

const EVENT_TYPES = ["user_message", "delta", "done", "reset"];
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15_000;

export class ConversationFeed {
  // handlers: onEvent(type, data, id), onState(state, leader), cursor() -> last applied event id
  constructor(conversationId, handlers) {
    this.id = conversationId;
    this.handlers = handlers;
    this.state = "connecting";
    this.leader = false;
    this.source = null;
    this.retryTimer = null;
    this.backoff = BACKOFF_FIRST_MS;
    this.stopped = false;
    this.release = null;
    this.lockAbort = new AbortController();
    this.channel = new BroadcastChannel(`streamfan:${conversationId}`);
    this.channel.onmessage = (message) => this.#onMessage(message.data);
    this.onOnline = () => { if (this.leader && !this.source) this.#connect(); };
    window.addEventListener("online", this.onOnline);
  }

  start() {
    if (!navigator.locks) {
      // No Web Locks (an insecure origin): every tab streams on its own.
      this.#lead();
      return;
    }
    this.#setState("connecting");
    this.channel.postMessage({ kind: "hello" }); // the leader answers with its state
    navigator.locks
      .request(`streamfan:${this.id}`, { signal: this.lockAbort.signal }, () => {
        if (this.stopped) return undefined;
        this.#lead();
        return new Promise((resolve) => { this.release = resolve; });
      })
      .catch((err) => { if (err.name !== "AbortError") console.error("stream lock failed", err); });
  }

  stop() {
    this.stopped = true;
    this.lockAbort.abort();
    this.#closeSource();
    clearTimeout(this.retryTimer);
    if (this.release) this.release();
    this.channel.close();
    window.removeEventListener("online", this.onOnline);
  }

  #lead() {
    this.leader = true;
    this.#connect();
  }

  #connect() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const cursor = this.handlers.cursor();
    const query = cursor ? `?last_event_id=${encodeURIComponent(cursor)}` : "";
    const source = new EventSource(`/api/conversations/${this.id}/events${query}`);
    this.source = source;
    this.#setState("connecting");
    source.onopen = () => {
      this.backoff = BACKOFF_FIRST_MS;
      this.#setState("live");
    };
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // A non-200 answer (node down behind the balancer, 502/503...): EventSource gave up.
        this.#closeSource();
        this.#setState(navigator.onLine ? "reconnecting" : "offline");
        const delay = this.backoff * (0.75 + Math.random() * 0.5);
        this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
        this.retryTimer = setTimeout(() => this.#connect(), delay);
      } else {
        this.#setState(navigator.onLine ? "reconnecting" : "offline");
      }
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        if (source !== this.source) return;
        if (this.state !== "live") this.#setState("live");
        this.handlers.onEvent(type, event.data, event.lastEventId);
        this.channel.postMessage({ kind: "event", type, data: event.data, id: event.lastEventId });
      });
    }
  }

  #closeSource() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  #setState(state) {
    this.state = state;
    this.handlers.onState(state, this.leader);
    if (this.leader) this.channel.postMessage({ kind: "state", state });
  }

  #onMessage(message) {
    if (this.stopped) return;
    if (message.kind === "event") {
      this.handlers.onEvent(message.type, message.data, message.id);
    } else if (message.kind === "state" && !this.leader) {
      this.state = message.state;
      this.handlers.onState(message.state, false);
    } else if (message.kind === "hello" && this.leader) {
      this.channel.postMessage({ kind: "state", state: this.state });
    }
  }
}
