// Streaming markdown: renders an answer as it grows, without re-parsing what is already on screen.
// Longer than 300 lines: a hand-written block and inline parser in one module (to be replaced by a
// vendored CommonMark parser, see the page issue).
//
// The text is cut into blocks (paragraph, list, code fence, table, quote, heading, rule). A block is
// committed, rendered once and never touched again, as soon as the line that ends it has arrived;
// only the open block at the end (the "tail") is re-rendered when a chunk comes in, and an open code
// fence only has its text updated. Code is highlighted once, when its fence closes.
//
// Safety: everything is built with createElement and text nodes. Model text never reaches innerHTML;
// raw HTML shows as text; links keep only http(s) and mailto targets; images are never loaded (an
// image becomes a link the reader may follow).

import { button, element } from "./dom.js";
import { highlightInto } from "./highlight.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const QUOTE = /^ {0,3}>/;
const TABLE_RULE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;

const blank = (line) => line.trim() === "";
const startsBlock = (line) =>
  FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);

// -- blocks ---------------------------------------------------------------------------------------

// The block starting at lines[i]: {type, end} (end: index after it), or null when the lines so far
// cannot tell where it ends. With `final`, every block ends at the last line.
function scanBlock(lines, i, final) {
  const n = lines.length;
  const line = lines[i];
  if (blank(line)) return { type: "blank", end: i + 1 };
  const fence = FENCE.exec(line);
  if (fence) {
    const marker = fence[1];
    for (let j = i + 1; j < n; j++) {
      const t = lines[j].trim();
      if (t.length >= marker.length && t === marker[0].repeat(t.length)) return { type: "code", end: j + 1, closed: true };
    }
    return final ? { type: "code", end: n, closed: false } : null;
  }
  if (HEADING.test(line)) return { type: "heading", end: i + 1 };
  if (RULE.test(line)) return { type: "rule", end: i + 1 };
  if (line.includes("|")) {
    if (i + 1 >= n) {
      if (!final) return null;
    } else if (TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      let j = i + 2;
      while (j < n && !blank(lines[j]) && lines[j].includes("|")) j++;
      return j < n || final ? { type: "table", end: j } : null;
    }
  }
  if (QUOTE.test(line)) {
    let j = i + 1;
    while (j < n && QUOTE.test(lines[j])) j++;
    return j < n || final ? { type: "quote", end: j } : null;
  }
  if (ITEM.test(line) && !RULE.test(line)) {
    let j = i + 1;
    while (j < n) {
      const next = lines[j];
      if (blank(next)) {
        if (j + 1 >= n) return final ? { type: "list", end: j } : null;
        const after = lines[j + 1];
        if (ITEM.test(after) || /^\s{2,}\S/.test(after)) { j += 1; continue; }
        return { type: "list", end: j };
      }
      if (!ITEM.test(next) && !/^\s/.test(next) && (FENCE.test(next) || HEADING.test(next) || RULE.test(next) || QUOTE.test(next))) {
        return { type: "list", end: j };
      }
      j++;
    }
    return final ? { type: "list", end: n } : null;
  }
  let j = i + 1;
  while (j < n && !blank(lines[j]) && !startsBlock(lines[j])) j++;
  return j < n || final ? { type: "paragraph", end: j } : null;
}

function renderBlock(block, lines) {
  switch (block.type) {
    case "blank": return null;
    case "code": {
      const fence = FENCE.exec(lines[0]);
      const body = lines.slice(1, block.closed ? -1 : undefined).join("\n");
      return codeBlock(fence[2], body, block.closed);
    }
    case "heading": {
      const [, hashes, text] = HEADING.exec(lines[0]);
      const el = document.createElement(`h${Math.min(hashes.length + 2, 6)}`);
      appendInline(el, text);
      return el;
    }
    case "rule": return document.createElement("hr");
    case "table": return table(lines);
    case "quote": {
      const el = document.createElement("blockquote");
      renderAll(el, lines.map((l) => l.replace(/^ {0,3}> ?/, "")));
      return el;
    }
    case "list": return list(lines);
    default: {
      const el = document.createElement("p");
      appendInline(el, lines.join("\n"));
      return el;
    }
  }
}

// Render complete lines into `parent` (used for nested content: list items, quotes).
function renderAll(parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const block = scanBlock(lines, i, true);
    const el = renderBlock(block, lines.slice(i, block.end));
    if (el) parent.append(el);
    i = block.end;
  }
}

export function codeBlock(language, body, closed) {
  const wrap = element("div", "code-block");
  const head = element("div", "code-head");
  const label = element("span", "code-lang", language || "text");
  head.append(label, button("Copy", "copy-code", `Copy ${language || "code"} to the clipboard`));
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = body;
  pre.append(code);
  wrap.append(head, pre);
  if (closed) highlightInto(code, body, language);
  return wrap;
}

function list(lines) {
  const first = ITEM.exec(lines[0]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const el = document.createElement(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) el.start = parseInt(first[2], 10);
  let item = null;
  let content = [];
  let contentIndent = 0;
  const flush = () => {
    if (!item) return;
    // A tight item (one paragraph) holds its text directly, like most chat UIs render it.
    const tight = !content.some(blank) && !startsBlock(content[0]) && !content.slice(1).some(startsBlock);
    if (tight) {
      appendInline(item, content.join("\n"));
    } else {
      renderAll(item, content);
    }
    el.append(item);
  };
  for (const line of lines) {
    const m = ITEM.exec(line);
    if (m && m[1].length <= indent + 1 && /\d/.test(m[2]) === ordered) {
      flush();
      item = document.createElement("li");
      content = [m[3] ?? ""];
      contentIndent = m[1].length + m[2].length + 1;
    } else {
      const strip = Math.min(contentIndent, line.length - line.trimStart().length);
      content.push(line.slice(strip));
    }
  }
  flush();
  return el;
}

function cells(line) {
  let t = line.trim();
  if (t.startsWith("|")) t = t.slice(1);
  if (t.endsWith("|") && !t.endsWith("\\|")) t = t.slice(0, -1);
  return t.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(lines) {
  const wrap = element("div", "table-wrap");
  const el = document.createElement("table");
  const aligns = cells(lines[1]).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
  const row = (line, tag) => {
    const tr = document.createElement("tr");
    cells(line).slice(0, Math.max(aligns.length, 1)).forEach((text, k) => {
      const cell = document.createElement(tag);
      if (aligns[k]) cell.className = `align-${aligns[k]}`;
      appendInline(cell, text);
      tr.append(cell);
    });
    return tr;
  };
  const thead = document.createElement("thead");
  thead.append(row(lines[0], "th"));
  const tbody = document.createElement("tbody");
  for (const line of lines.slice(2)) tbody.append(row(line, "td"));
  el.append(thead, tbody);
  wrap.append(el);
  return wrap;
}

// -- inline ---------------------------------------------------------------------------------------

const DELIMS = [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];
const BARE_URL = /^https?:\/\/[^\s<>"]*[^\s<>"'.,;:!?)\]]/;

export function appendInline(parent, text, inLink = false) {
  let plain = "";
  const flush = () => { if (plain) { parent.append(plain); plain = ""; } };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && i + 1 < text.length && /[!-/:-@[-`{-~]/.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      const run = /^`+/.exec(text.slice(i))[0];
      const close = text.indexOf(run, i + run.length);
      if (close > 0) {
        flush();
        const code = document.createElement("code");
        let body = text.slice(i + run.length, close);
        if (body.length > 2 && body.startsWith(" ") && body.endsWith(" ")) body = body.slice(1, -1);
        code.textContent = body;
        parent.append(code);
        i = close + run.length;
        continue;
      }
      plain += run;
      i += run.length;
      continue;
    }
    if (!inLink && (ch === "[" || (ch === "!" && text[i + 1] === "["))) {
      const link = parseLink(text, ch === "!" ? i + 1 : i);
      if (link) {
        flush();
        parent.append(ch === "!" ? image(link.label, link.url) : anchor(link.label, link.url));
        i = link.end;
        continue;
      }
    }
    if (ch === "<" && !inLink) {
      const auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i));
      if (auto) {
        flush();
        parent.append(anchor(auto[1], auto[1]));
        i += auto[0].length;
        continue;
      }
    }
    if (!inLink && (ch === "h" || ch === "H") && (i === 0 || /[\s(]/.test(text[i - 1]))) {
      const url = BARE_URL.exec(text.slice(i));
      if (url) {
        flush();
        parent.append(anchor(url[0], url[0]));
        i += url[0].length;
        continue;
      }
    }
    const delim = emphasisAt(text, i);
    if (delim) {
      flush();
      const el = document.createElement(delim.tag);
      appendInline(el, text.slice(i + delim.mark.length, delim.close), inLink);
      parent.append(el);
      i = delim.close + delim.mark.length;
      continue;
    }
    plain += ch;
    i++;
  }
  flush();
}

function emphasisAt(text, i) {
  for (const [mark, tag] of DELIMS) {
    if (!text.startsWith(mark, i)) continue;
    const next = text[i + mark.length];
    if (next === undefined || /\s/.test(next)) return null;
    if (mark[0] === "_" && i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1])) return null; // snake_case
    let from = i + mark.length + 1;
    while (true) {
      const close = text.indexOf(mark, from);
      if (close < 0) break;
      const before = text[close - 1];
      const after = text[close + mark.length];
      const intraword = mark[0] === "_" && after !== undefined && /[\p{L}\p{N}]/u.test(after);
      const doubled = mark.length === 1 && (after === mark || before === mark);
      if (!/\s/.test(before) && !intraword && !doubled) return { mark, tag, close };
      from = close + 1;
    }
    if (mark.length === 2) continue; // "**x" unclosed: maybe "*" closes
    return null;
  }
  return null;
}

function parseLink(text, open) {
  let depth = 0;
  let k = open;
  for (; k < text.length; k++) {
    if (text[k] === "\\") { k++; continue; }
    if (text[k] === "[") depth++;
    else if (text[k] === "]" && --depth === 0) break;
    else if (text[k] === "\n" && text[k + 1] === "\n") return null;
  }
  if (k >= text.length || text[k + 1] !== "(") return null;
  const m = /^\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/.exec(text.slice(k + 1));
  if (!m) return null;
  return { label: text.slice(open + 1, k), url: m[1], end: k + 1 + m[0].length };
}

function anchor(label, url) {
  if (!SAFE_URL.test(url)) {
    // javascript:, data:, relative and every other target: the label only, as text.
    const span = element("span", "unsafe-link");
    span.title = "link removed";
    appendInline(span, label, true);
    return span;
  }
  const a = document.createElement("a");
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.referrerPolicy = "no-referrer";
  appendInline(a, label || url, true);
  return a;
}

function image(alt, url) {
  // Never an <img>: a remote image would leak the reader's address (and the CSP refuses it anyway).
  const label = `🖼 ${alt || "image"}`;
  if (!SAFE_URL.test(url) || url.toLowerCase().startsWith("mailto:")) {
    const span = element("span", "image-placeholder", label);
    return span;
  }
  const a = anchor(label, url);
  a.classList.add("image-placeholder");
  a.title = "image not loaded: opens in a new tab";
  return a;
}

// -- the streaming renderer -----------------------------------------------------------------------

export class StreamingMarkdown {
  constructor(container) {
    this.container = container;
    this.source = "";
    this.committedChars = 0; // source[0:committedChars] is rendered for good
    this.tail = document.createElement("div");
    this.tail.className = "md-tail";
    this.container.append(this.tail);
    this.tailCode = null; // {start, code} while the tail is one open code fence
  }

  get text() { return this.source; }

  append(chunk) {
    if (!chunk) return;
    this.source += chunk;
    this.#commit(false);
    this.#renderTail();
  }

  finish() {
    this.#commit(true);
    this.tail.remove();
    this.tailCode = null;
  }

  #commit(final) {
    const rest = this.source.slice(this.committedChars);
    const complete = final ? rest : rest.slice(0, rest.lastIndexOf("\n") + 1);
    if (!complete) return;
    const lines = complete.split("\n");
    if (!final) lines.pop(); // the "" after the last newline
    let i = 0;
    let offset = this.committedChars;
    while (i < lines.length) {
      const block = scanBlock(lines, i, final);
      if (block === null) break;
      const blockLines = lines.slice(i, block.end);
      const el = renderBlock(block, blockLines);
      if (el) this.container.insertBefore(el, this.tail);
      offset += blockLines.reduce((sum, l) => sum + l.length + 1, 0);
      i = block.end;
      this.tailCode = null;
    }
    this.committedChars = Math.min(offset, this.source.length);
  }

  #renderTail() {
    const rest = this.source.slice(this.committedChars);
    const lines = rest.split("\n");
    const fence = FENCE.exec(lines[0]);
    if (fence && scanBlock(lines, 0, true).closed === false) {
      // An open code fence: update its text only (long code must not be rebuilt per token).
      const body = lines.slice(1).join("\n");
      if (this.tailCode?.start !== this.committedChars) {
        const el = codeBlock(fence[2], body, false);
        this.tail.replaceChildren(el);
        this.tailCode = { start: this.committedChars, code: el.querySelector("code") };
      } else {
        this.tailCode.code.textContent = body;
      }
      return;
    }
    this.tailCode = null;
    const fragment = document.createDocumentFragment();
    renderAll(fragment, lines);
    this.tail.replaceChildren(fragment);
  }
}

// Render a finished text at once (history).
export function renderMarkdown(container, text) {
  const md = new StreamingMarkdown(container);
  md.append(text);
  md.finish();
  return md;
}
