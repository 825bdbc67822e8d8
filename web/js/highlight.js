// Syntax highlighting for closed code fences, with highlight.js (vendored), inserted safely.
//
// highlight.js returns HTML. It is parsed in an inert document (DOMParser: no scripts run, nothing
// loads) and only text and <span class="hljs-..."> survive the copy into the page; if the copy's
// text differs from the code in any way, the code stays plain.

import { loadHighlighter } from "./vendored.js";

const CLASS = /^(?:hljs-[\w-]+|[\w-]+_)$/;
const MAX_CHARS = 100_000;

let hljs = null;

// The first code block with a language fetches highlight.js: it stays plain until then.
export function highlightInto(code, text, language) {
  if (!language || text.length > MAX_CHARS) return;
  if (hljs) {
    highlightNow(code, text, language);
    return;
  }
  loadHighlighting()
    .then(() => { if (code.isConnected) highlightNow(code, text, language); })
    .catch((err) => console.error("highlight.js failed to load", err));
}

export function loadHighlighting() {
  return loadHighlighter().then((module) => { hljs = module; });
}

function highlightNow(code, text, language) {
  if (code.textContent !== text || !hljs.getLanguage(language)) return; // redrawn meanwhile
  let html;
  try {
    html = hljs.highlight(text, { language, ignoreIllegals: true }).value;
  } catch {
    return;
  }
  const inert = new DOMParser().parseFromString(`<div>${html}</div>`, "text/html");
  const fragment = document.createDocumentFragment();
  copySpans(inert.body.firstChild, fragment);
  if (fragment.textContent !== text) return;
  code.replaceChildren(fragment);
  code.classList.add("hljs", `language-${language}`);
}

function copySpans(from, to) {
  for (const node of from.childNodes) {
    if (node.nodeType === Node.TEXT_NODE) {
      to.append(node.data);
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      if (node.localName !== "span") {
        copySpans(node, to);
        continue;
      }
      const span = document.createElement("span");
      const classes = [...node.classList].filter((c) => CLASS.test(c));
      if (classes.length) span.className = classes.join(" ");
      copySpans(node, span);
      to.append(span);
    }
  }
}
