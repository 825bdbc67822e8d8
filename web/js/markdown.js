// Streaming markdown: CommonMark + GFM (marked's lexer, vendored), rendered as an answer grows.
//
// The source is cut into top-level blocks by marked's lexer. A block is committed (rendered once,
// never touched again) when two more blocks follow it, so nothing that arrives later can change it
// (a paragraph that becomes a setext heading, a list that gains a loose item): only the open tail
// (the last two blocks) is lexed and rebuilt, and at most once per animation frame, so the cost is
// linear in the answer, not in its chunks. An open code fence is highlighted as it streams.
//
// Safety (markdown_dom.js): the DOM is built from the tokens with createElement and text nodes
// only; model text never reaches innerHTML.

import { element } from "./dom.js";
import { lex, renderBlocks } from "./markdown_dom.js";

const OPEN_BLOCKS = 2; // blocks kept open at the end: later text can still change them
const SMALL_TAIL = 2048; // an open tail this long is redrawn every frame; longer, when it grew by a quarter
const REFERENCE = /\[[^\]\n]*\](?!\()/; // may use a link definition that arrives later


// -- the streaming renderer -----------------------------------------------------------------------

// Render `source` at once (tests compare streamed rendering with it).
export function renderMarkdown(source, container) {
  renderBlocks(lex(source.replace(/\r\n?/g, "\n")), container);
}

// While a paragraph streams, "**bo" would show its asterisks until "**" closes: the open paragraph
// is drawn as if its last ** and ` were closed. Only the drawing of the open tail: the text, and
// what is drawn once the block is complete, are exact.
function closeOpenMarks(tokens, links) {
  const last = tokens.at(-1);
  if (!last || last.type !== "paragraph") return tokens;
  let raw = last.raw.replace(/\n+$/, "");
  if ((raw.match(/`/g) || []).length % 2) raw += "`";
  else if ((raw.match(/\*\*/g) || []).length % 2 && !raw.endsWith("*")) raw += "**";
  else return tokens;
  return [...tokens.slice(0, -1), ...lex(raw, { ...links })];
}

export class StreamingMarkdown {
  constructor(container) {
    this.container = container;
    this.source = ""; // exactly as it arrived (what "Copy" copies)
    this.normalized = ""; // line endings as LF: what is lexed
    this.heldCR = false; // a chunk ended in CR: it may be half of a CRLF
    this.committed = 0; // normalized[0:committed] is rendered for good
    this.links = {}; // link reference definitions of the committed blocks
    this.drawn = 0; // length of the open tail when it was last drawn
    this.referring = []; // committed blocks that may refer to later definitions: {raw, nodes}
    this.tail = element("div", "md-tail");
    this.container.append(this.tail);
    this.frame = 0;
  }

  get text() { return this.source; }

  append(chunk) {
    if (!chunk) return;
    this.source += chunk;
    let text = (this.heldCR ? "\r" : "") + chunk;
    this.heldCR = text.endsWith("\r");
    if (this.heldCR) text = text.slice(0, -1);
    this.normalized += text.replace(/\r\n?/g, "\n");
    if (!this.frame) this.frame = requestAnimationFrame(() => this.#render(false));
  }

  // Render what has arrived now (what the next animation frame would do).
  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.#render(false);
  }

  // The answer is complete: render what is left now, all of it committed.
  finish() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (this.heldCR) this.normalized += "\n";
    this.heldCR = false;
    this.#render(true);
    this.tail.remove();
  }

  #render(final) {
    this.frame = 0;
    const pending = this.normalized.length - this.committed;
    // A long open block (one 30 KB paragraph, a 300-item list) is redrawn when it has grown by a
    // quarter, not every frame: the work stays linear in the answer however it is chunked.
    if (!final && pending > SMALL_TAIL && pending - this.drawn < this.drawn / 4) return;
    this.drawn = pending;
    const links = { ...this.links };
    const tokens = lex(this.normalized.slice(this.committed), links);
    let keep = 0; // tokens (from the end) that stay open
    if (!final) {
      let open = 0;
      keep = tokens.length;
      for (let k = tokens.length - 1; k >= 0; k--) {
        if (tokens[k].type !== "space" && ++open > OPEN_BLOCKS) {
          keep = tokens.length - k - 1;
          break;
        }
      }
      if (open <= OPEN_BLOCKS) keep = tokens.length;
    }
    const done = tokens.length - keep;
    const learnt = Object.keys(links).length > Object.keys(this.links).length;
    if (done > 0) {
      for (const token of tokens.slice(0, done)) {
        const fragment = document.createDocumentFragment();
        renderBlocks([token], fragment);
        if (REFERENCE.test(token.raw)) this.referring.push({ raw: token.raw, nodes: [...fragment.childNodes] });
        this.container.insertBefore(fragment, this.tail);
        this.committed += token.raw.length;
      }
      this.links = links;
      this.drawn = this.normalized.length - this.committed;
      if (learnt) this.#redrawReferring();
    }
    const open = document.createDocumentFragment();
    renderBlocks(final ? tokens.slice(done) : closeOpenMarks(tokens.slice(done), this.links), open);
    this.tail.replaceChildren(open);
  }

  // New link definitions arrived: committed blocks that may use them are drawn again.
  #redrawReferring() {
    for (const block of this.referring) {
      const fragment = document.createDocumentFragment();
      renderBlocks(lex(block.raw, { ...this.links }), fragment);
      const nodes = [...fragment.childNodes];
      const first = block.nodes[0];
      if (first?.parentNode) first.parentNode.insertBefore(fragment, first);
      for (const node of block.nodes) node.remove();
      block.nodes = nodes;
    }
  }
}
