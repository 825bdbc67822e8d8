// Vendored libraries the page may never need, each fetched once, when first needed: a page with
// no formula and no code fetches neither KaTeX (270 KB) nor highlight.js (130 KB).

const VENDOR = "/static/vendor";
const loading = new Map();

function once(key, load) {
  if (!loading.has(key)) loading.set(key, load());
  return loading.get(key);
}

function stylesheet(href, media = "") {
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  if (media) link.media = media;
  document.head.append(link);
}

// KaTeX ships its minified build as a UMD script, which sets self.katex when run as a module.
export function loadKatex() {
  return once("katex", async () => {
    stylesheet(`${VENDOR}/katex-0.16.47/katex.min.css`);
    await import(`${VENDOR}/katex-0.16.47/katex.min.js`);
    return self.katex;
  });
}

export function loadHighlighter() {
  return once("highlight.js", async () => {
    stylesheet(`${VENDOR}/highlight.js-11.12.0/github.min.css`, "(prefers-color-scheme: light)");
    stylesheet(`${VENDOR}/highlight.js-11.12.0/github-dark.min.css`, "(prefers-color-scheme: dark)");
    return (await import(`${VENDOR}/highlight.js-11.12.0/highlight.min.js`)).default;
  });
}
