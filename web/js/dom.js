// Small DOM builders shared by the page's modules (text only: nothing here takes HTML).

export function button(text, className, label) {
  const el = element("button", className, text);
  el.type = "button";
  el.setAttribute("aria-label", label);
  return el;
}

// <tag class=className>text</tag>; text is set as text, never parsed.
export function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}
