// Small DOM builders shared by the page's modules (text only: nothing here takes HTML).

export function button(text, className, label) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = className;
  el.textContent = text;
  el.setAttribute("aria-label", label);
  return el;
}
