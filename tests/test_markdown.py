"""The page's markdown in Chromium: CommonMark conformance, streamed == whole, linear streaming cost.

The CommonMark spec's examples (npm ``commonmark-spec``, installed with the test clients) minus raw
HTML and images, which the page shows as text and as links by design, are rendered through the
page's renderer and compared with the spec's HTML, both canonicalised the same way (link targets
left out: the page keeps only http(s) and mailto ones; its code-block chrome left out).
"""

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from playwright.sync_api import BrowserContext

from tests.conftest import ROOT, EmbeddedNode
from tests.test_web_e2e import open_page

pytestmark = pytest.mark.slow  # slow: Chromium

EXCLUDED_SECTIONS = {"HTML blocks", "Raw HTML", "Images"}
RAW_HTML = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(\s[^>]*)?/?>|<!--|<\?|<![A-Z\[]")

CANON = """
(() => {
  const canon = (node, inPre) => {
    if (node.nodeType === Node.TEXT_NODE) return inPre ? node.data : node.data.replace(/\\s+/g, ' ');
    if (node.nodeType !== Node.ELEMENT_NODE) return '';
    if (node.hasAttribute('data-ui')) return '';
    let tag = node.localName;
    if (tag === 'div' || (tag === 'span' && !node.classList.contains('unsafe-link'))) {
      return [...node.childNodes].map((n) => canon(n, inPre)).join('');
    }
    if (tag === 'span') tag = 'a';
    if (tag === 'pre') {
      const code = node.querySelector('code');
      const lang = code && [...code.classList].find((c) => c.startsWith('language-'));
      return `<pre><code${lang ? ` class="${lang}"` : ''}>${node.textContent}</code></pre>`;
    }
    const attrs = [];
    if (tag === 'ol' && node.getAttribute('start')) attrs.push(` start="${node.getAttribute('start')}"`);
    const inner = [...node.childNodes].map((n) => canon(n, inPre)).join('');
    return `<${tag}${attrs.join('')}>${inner.trim()}</${tag}>`;
  };
  const canonAll = (root) => [...root.childNodes].map((n) => canon(n, false)).join('')
    .replace(/>\\s+</g, '><').replace(/<br><\\/br>\\s+/g, '<br></br>')
    .replace(/\\s+<(ul|ol|blockquote|pre|h[1-6]|p)>/g, '<$1>').trim();
  return canonAll;
})()
"""


def spec_examples() -> list[dict[str, Any]]:
    """The spec's examples, read by the npm package itself (it parses its spec.txt)."""
    node_js = shutil.which("node")
    assert node_js is not None, "Node.js is missing: ./scripts/test.sh installs it"
    done = subprocess.run(
        [node_js, "-e", "process.stdout.write(JSON.stringify(require('commonmark-spec').tests))"],
        cwd=ROOT / "tests" / "node",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    examples: list[dict[str, Any]] = json.loads(done.stdout)
    return examples


def test_commonmark_spec_examples_render_as_the_spec_says(node: EmbeddedNode, context: BrowserContext) -> None:
    spec = spec_examples()
    examples = [
        {**e, "markdown": e["markdown"].replace("\u2192", "\t"), "html": e["html"].replace("\u2192", "\t")}
        for e in spec
        if e["section"] not in EXCLUDED_SECTIONS and "<img" not in e["html"] and not RAW_HTML.search(e["markdown"])
    ]
    page = open_page(context, node.url + "/")
    results = page.evaluate(
        """async ([examples]) => {
            const { renderMarkdown } = await import('/static/js/markdown.js');
            const canonAll = """
        + CANON
        + """;
            return examples.map((e) => {
                const box = document.createElement('div');
                renderMarkdown(e.markdown, box);
                const expected = new DOMParser().parseFromString(`<div>${e.html}</div>`, 'text/html').body.firstChild;
                return [e.number, canonAll(box) === canonAll(expected), canonAll(box), canonAll(expected)];
            });
        }""",
        [examples],
    )
    passed = [r for r in results if r[1]]
    failed = [r for r in results if not r[1]]
    rate = len(passed) / len(results)
    print(f"CommonMark: {len(passed)}/{len(results)} = {rate:.1%}; failing: {[r[0] for r in failed]}")
    for number, _, got, want in failed[:80]:
        print(f"--- {number}\n got: {got[:200]!r}\nwant: {want[:200]!r}")
    assert len(results) >= 450 and rate >= 0.95, failed[:5]


def test_streamed_rendering_equals_whole_for_every_spec_example_and_chunking(
    node: EmbeddedNode, context: BrowserContext
) -> None:
    spec = spec_examples()
    documents = [e["markdown"] for e in spec] + ["1. a\n\n2. b\n\n   ```js\n   let x;\n   ```\n3. c", "a\r\nb\r\n\r\nc"]
    page = open_page(context, node.url + "/")
    mismatches = page.evaluate(
        """async (docs) => {
            const { StreamingMarkdown } = await import('/static/js/markdown.js');
            await (await import('/static/js/markdown_dom.js')).loadMath();
            await (await import('/static/js/highlight.js')).loadHighlighting();
            const render = (text, sizes, frames) => {
                const box = document.createElement('div');
                const md = new StreamingMarkdown(box);
                let i = 0, k = 0;
                while (i < text.length) {
                    const n = sizes[k++ % sizes.length];
                    md.append(text.slice(i, i + n));
                    i += n;
                    if (frames) md.flush();
                }
                md.finish();
                return box.innerHTML;
            };
            const out = [];
            docs.forEach((doc, d) => {
                const whole = render(doc, [doc.length || 1], false);
                for (const sizes of [[1], [2, 3], [7], [1, 13, 4]]) {
                    if (render(doc, sizes, true) !== whole) out.push([d, sizes]);
                }
            });
            return out;
        }""",
        documents,
    )
    print("mismatches", mismatches, [documents[d][:80] for d, _ in mismatches])
    assert mismatches == []


def test_long_answers_stream_in_linear_time(node: EmbeddedNode, context: BrowserContext) -> None:
    """A paragraph and a numbered list, streamed in small chunks with a render per frame's worth:
    four times the text takes about four times as long, not sixteen (a ratio within one run, so a
    busy machine slows both alike; the best of three runs of each)."""
    page = open_page(context, node.url + "/")
    words = " ".join(f"word{i} *em{i}* `c{i}`" for i in range(1400))
    items = [f"{i}. item {i} with **bold** and a [link](https://example.com/{i})" for i in range(1, 301)]
    docs = [words[:7_500], words[:30_000], "\n".join(items[:75]), "\n".join(items)]
    timings: Any = page.evaluate(
        """async (docs) => {
            const { StreamingMarkdown } = await import('/static/js/markdown.js');
            const once = (doc) => {
                const box = document.createElement('div');
                document.body.append(box);
                const md = new StreamingMarkdown(box);
                const started = performance.now();
                for (let i = 0, n = 0; i < doc.length; i += 6, n++) {
                    md.append(doc.slice(i, i + 6));
                    if (n % 10 === 9) md.flush();  // ten tokens per frame, as a fast model streams
                }
                md.finish();
                const took = performance.now() - started;
                box.remove();
                return took;
            };
            return docs.map((doc) => Math.min(once(doc), once(doc), once(doc)));
        }""",
        docs,
    )
    paragraph, listing = timings[1] / max(timings[0], 1), timings[3] / max(timings[2], 1)
    print(f"ms {timings}: x{paragraph:.1f} for a paragraph 4x longer, x{listing:.1f} for a list 4x longer")
    assert paragraph < 8 and listing < 8, timings


def test_math_is_typeset_and_prices_are_not(node: EmbeddedNode, context: BrowserContext) -> None:
    page = open_page(context, node.url + "/")
    result = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/static/js/markdown.js');
            await (await import('/static/js/markdown_dom.js')).loadMath();
            const box = document.createElement('div');
            document.body.append(box);
            renderMarkdown('Energy $E = mc^2$ costs $5 and $6.\\n\\n$$\\\\int_0^1 x\\\\,dx = \\\\frac{1}{2}$$\\n', box);
            return {
                inline: box.querySelectorAll('span.math .katex').length,
                block: box.querySelectorAll('div.math-block .katex-display').length,
                text: box.innerText,
            };
        }"""
    )
    assert result["inline"] == 1 and result["block"] == 1, result
    assert "costs $5 and $6." in result["text"]


def test_an_open_bold_or_code_span_does_not_flash_its_marks(node: EmbeddedNode, context: BrowserContext) -> None:
    page = open_page(context, node.url + "/")
    shown = page.evaluate(
        """async () => {
            const { StreamingMarkdown } = await import('/static/js/markdown.js');
            const box = document.createElement('div');
            const md = new StreamingMarkdown(box);
            const seen = [];
            for (const chunk of ['Here is **bo', 'ld** and `co', 'de` end']) {
                md.append(chunk);
                md.flush();
                seen.push(box.innerText);
            }
            md.finish();
            seen.push(box.innerHTML);
            return seen;
        }"""
    )
    assert shown[0] == "Here is bo" and shown[1] == "Here is bold and co"
    assert shown[3].startswith("<p>Here is <strong>bold</strong> and <code>code</code> end</p>")
