// Markdown tokens (marked's lexer, vendored) to DOM, with createElement and text nodes only; math
// ($...$, $$...$$) typeset by KaTeX (vendored), which builds its DOM with createElement too.
//
// Safety: marked's HTML renderer is never used and model text never reaches innerHTML. Raw HTML
// shows as text, links keep only http(s) and mailto targets, and images are never loaded (an image
// becomes a link). Character references are decoded in an inert document (DOMParser).

import { Lexer, Marked } from "../vendor/marked-18.2.1/marked.esm.js";
import { button, element } from "./dom.js";
import { highlightInto } from "./highlight.js";
import { loadKatex } from "./vendored.js";

const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;

// -- math: $...$ and $$...$$, typeset by KaTeX (vendored, loaded when first needed) ---------------

const MATH_BLOCK = /^ {0,3}\$\$([\s\S]+?)\$\$[ \t]*(?:\n|$)/;
// An inline formula: no space inside the dollars, and not "$5 and $6" (no digit after the closing one).
const MATH_INLINE = /^\$(?![\s$])((?:\\\$|[^$\n])+?)(?<![\s\\])\$(?!\d)/;

const mathExtensions = [
  {
    name: "mathBlock",
    level: "block",
    start: (src) => src.match(/^ {0,3}\$\$/m)?.index,
    tokenizer(src) {
      const match = MATH_BLOCK.exec(src);
      return match ? { type: "mathBlock", raw: match[0], text: match[1].trim() } : undefined;
    },
  },
  {
    name: "mathInline",
    level: "inline",
    start: (src) => src.indexOf("$"),
    tokenizer(src) {
      const match = MATH_INLINE.exec(src);
      return match ? { type: "mathInline", raw: match[0], text: match[1] } : undefined;
    },
  },
];
const options = new Marked({ gfm: true }).use({ extensions: mathExtensions }).defaults;

let katex = null;
let waiting = [];

// KaTeX, fetched with the first formula; formulas drawn meanwhile show their TeX until it is here.
export function loadMath() {
  return loadKatex().then((module) => {
    katex = module;
    for (const [el, tex, display] of waiting) typeset(el, tex, display);
    waiting = [];
  });
}

function typeset(el, tex, display) {
  el.replaceChildren(); // the TeX source shown meanwhile
  katex.render(tex, el, { displayMode: display, throwOnError: false, maxExpand: 1000, maxSize: 50 });
}

function math(tex, display) {
  const el = element(display ? "div" : "span", display ? "math math-block" : "math", tex);
  if (katex) {
    typeset(el, tex, display);
  } else {
    waiting.push([el, tex, display]);
    loadMath().catch((err) => console.error("KaTeX failed to load", err));
  }
  return el;
}

// Lex `source`, knowing the link reference definitions seen so far (`links`, updated).
export function lex(source, links = {}) {
  const lexer = new Lexer(options);
  Object.assign(lexer.tokens.links, links);
  const tokens = lexer.lex(source);
  Object.assign(links, tokens.links);
  return tokens;
}

export function renderBlocks(tokens, parent, tight = false) {
  for (const token of tokens) {
    const el = renderBlock(token, tight);
    if (el) parent.append(el);
  }
}

function renderBlock(token, tight) {
  switch (token.type) {
    case "space":
    case "def":
      return null;
    case "paragraph":
      if (tight) return inlineFragment(token.tokens);
      return withInline("p", token.tokens);
    case "text":
      // A tight list item's text (possibly holding inline tokens).
      return token.tokens ? inlineFragment(token.tokens) : document.createTextNode(token.text);
    case "heading":
      return withInline(`h${token.depth}`, token.tokens);
    case "code":
      return codeBlock(token.lang ? decode(token.lang.split(/\s/)[0]) : "", token.text);
    case "blockquote": {
      const quote = document.createElement("blockquote");
      renderBlocks(token.tokens, quote);
      return quote;
    }
    case "list":
      return list(token);
    case "table":
      return table(token);
    case "hr":
      return document.createElement("hr");
    case "mathBlock":
      return math(token.text, true);
    case "html":
      // Raw HTML is shown, never parsed.
      return token.block ? element("p", "raw-html", token.text.replace(/\n$/, "")) : document.createTextNode(token.text);
    default:
      return token.text ? document.createTextNode(token.text) : null;
  }
}

export function codeBlock(language, body) {
  const wrap = element("div", "code-block");
  const head = element("div", "code-head");
  head.dataset.ui = "";
  head.append(element("span", "code-lang", language || "text"));
  head.append(button("Copy", "copy-code", `Copy ${language || "code"} to the clipboard`));
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = body && !body.endsWith("\n") ? `${body}\n` : body;
  if (language) code.classList.add(`language-${language}`);
  pre.append(code);
  wrap.append(head, pre);
  highlightInto(code, code.textContent, language);
  return wrap;
}

function list(token) {
  const el = document.createElement(token.ordered ? "ol" : "ul");
  if (token.ordered && token.start !== "" && token.start !== 1) el.start = token.start;
  for (const item of token.items) {
    const li = document.createElement("li");
    if (item.task) {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.disabled = true;
      box.checked = !!item.checked;
      li.append(box, " ");
    }
    renderBlocks(item.tokens.filter((t) => !(item.task && t.type === "checkbox")), li, !token.loose);
    el.append(li);
  }
  return el;
}

function table(token) {
  const el = document.createElement("table");
  const head = document.createElement("thead");
  const row = document.createElement("tr");
  token.header.forEach((cell, k) => row.append(tableCell("th", cell, token.align[k])));
  head.append(row);
  el.append(head);
  if (token.rows.length) {
    const body = document.createElement("tbody");
    for (const cells of token.rows) {
      const tr = document.createElement("tr");
      cells.forEach((cell, k) => tr.append(tableCell("td", cell, token.align[k])));
      body.append(tr);
    }
    el.append(body);
  }
  return el;
}

function tableCell(tag, cell, align) {
  const el = withInline(tag, cell.tokens);
  if (align) el.className = `align-${align}`;
  return el;
}

// -- inline ---------------------------------------------------------------------------------------

function withInline(tag, tokens) {
  const el = document.createElement(tag);
  el.append(inlineFragment(tokens));
  return el;
}

function inlineFragment(tokens) {
  const fragment = document.createDocumentFragment();
  for (const token of tokens || []) {
    const node = renderInline(token);
    if (node) fragment.append(node);
  }
  return fragment;
}

// Code keeps character references as written; only marked's own escapes are undone.
const ESCAPES = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'" };
function unescape(text) {
  return text.includes("&") ? text.replace(/&(?:amp|lt|gt|quot|#39);/g, (e) => ESCAPES[e]) : text;
}

const ENTITY = /&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});/g;
const entities = new Map();

// marked leaves character references (and its own escapes of &, <, >, ", ') in the text for an
// HTML renderer; text nodes need the characters. Each reference is decoded once, in an inert
// document (DOMParser: nothing runs, nothing loads), and only the text is kept.
function decode(text) {
  if (!text.includes("&")) return text;
  return text.replace(ENTITY, (reference) => {
    let value = entities.get(reference);
    if (value === undefined) {
      value = new DOMParser().parseFromString(`<p>${reference}</p>`, "text/html").body.textContent;
      if (entities.size < 10_000) entities.set(reference, value);
    }
    return value;
  });
}

function renderInline(token) {
  switch (token.type) {
    case "text":
      return token.tokens ? inlineFragment(token.tokens) : document.createTextNode(decode(token.text));
    case "escape":
      return document.createTextNode(decode(token.text));
    case "strong":
    case "em":
    case "del":
      return withInline(token.type, token.tokens);
    case "codespan":
      return element("code", "", unescape(token.text));
    case "br":
      return document.createElement("br");
    case "mathInline":
      return math(token.text, false);
    case "link":
      return anchor(decode(token.href), token.title && decode(token.title), inlineFragment(token.tokens));
    case "image":
      return image(decode(token.href), decode(token.text));
    case "html":
      return document.createTextNode(token.text);
    default:
      return token.raw ? document.createTextNode(token.raw) : null;
  }
}

function anchor(url, title, content) {
  if (!SAFE_URL.test(url)) {
    // javascript:, data:, relative and every other target: the label only, as text.
    const span = element("span", "unsafe-link");
    span.title = "link removed";
    span.append(content);
    return span;
  }
  const a = document.createElement("a");
  a.href = url;
  if (title) a.title = title;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.referrerPolicy = "no-referrer";
  a.append(content);
  return a;
}

function image(url, alt) {
  // Never an <img>: a remote image would leak the reader's address (and the CSP refuses it anyway).
  const label = document.createTextNode(`🖼 ${alt || "image"}`);
  if (!SAFE_URL.test(url) || url.toLowerCase().startsWith("mailto:")) {
    const span = element("span", "image-placeholder");
    span.append(label);
    return span;
  }
  const a = anchor(url, "image not loaded: opens in a new tab", label);
  a.classList.add("image-placeholder");
  return a;
}

