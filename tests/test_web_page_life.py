"""The page over its life in Chromium, against the README's command: what it fetches, and a tab that
comes back from the back/forward cache.

Playwright turns Chromium's back/forward cache off by default (``--disable-back-forward-cache``);
these tests turn it back on, as every user's browser has it.
"""

from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.conftest import EmbeddedNode, browser_context
from tests.test_web_e2e import conversation_id, open_page, rendered_text, send, stored_answer, wait_finished

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # slow: Chromium

VENDORED = ("katex-0.16.47/", "highlight.js-11.12.0/")


@pytest.fixture
def cached_context() -> Iterator[BrowserContext]:
    """A browser with its back/forward cache on."""
    with browser_context(back_forward_cache=True) as context:
        yield context


def answers(page: Page) -> int:
    return int(page.locator("article.msg.assistant").count())


def wait_answers(page: Page, count: int) -> None:
    page.wait_for_selector(f"article.msg.assistant:nth-of-type({2 * count})", state="attached", timeout=20_000)
    wait_finished(page)


def test_a_page_fetches_katex_and_highlightjs_only_when_an_answer_needs_them(
    node: EmbeddedNode, context: BrowserContext
) -> None:
    page = context.new_page()
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(node.url + "/")
    send(page, "plain words, no formula and no code")
    cid = conversation_id(page)
    wait_answers(page, 1)
    page.goto(f"{node.url}/c/{cid}")  # a first load of a conversation without formulas or code
    wait_finished(page)
    assert [url for url in fetched if any(name in url for name in VENDORED)] == []

    send(page, "Energy $E = mc^2$ here.\n\n```python\ndef f(x):\n    return x\n```\n")
    wait_answers(page, 2)
    answer = page.locator("article.msg.assistant").last
    answer.locator(".math .katex").first.wait_for(state="attached")
    answer.locator("code span.hljs-keyword").first.wait_for(state="attached")
    send(page, "Again $a^2 + b^2$ and\n\n```python\nimport os\n```\n")
    wait_answers(page, 3)
    page.locator("article.msg.assistant").last.locator("code span.hljs-keyword").first.wait_for(state="attached")
    names = [url.rsplit("/", 1)[1] for url in fetched]
    assert names.count("katex.min.js") == names.count("highlight.min.js") == 1  # each fetched once


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "beside-another-tab"])
def test_a_tab_restored_from_the_back_forward_cache_follows_its_conversation(
    node: EmbeddedNode, cached_context: BrowserContext, alone: bool
) -> None:
    """Alone, the restored tab must lead again (it left without its lock and its stream); beside
    another tab, which took the stream over, it must follow through that one, not open its own."""
    first = open_page(cached_context, node.url + "/")
    send(first, "the first question")
    cid = conversation_id(first)
    wait_answers(first, 1)
    tabs = [first]
    if not alone:
        tabs.append(open_page(cached_context, f"{node.url}/c/{cid}"))
        tabs[1].wait_for_selector("#connection[data-state=live]")
    first.evaluate("window.kept = true")

    first.goto(node.url + "/healthz")
    asked = 1
    if not alone:  # the other tab takes the stream over, and the conversation goes on there
        send(tabs[1], "asked while the first tab was away")
        asked = 2
        wait_answers(tabs[1], asked)
    first.go_back(wait_until="commit")  # "load" does not fire on a page restored from the cache
    assert first.evaluate("window.kept === true"), "the page was reloaded, not restored from the cache"
    wait_answers(first, asked)  # with what happened meanwhile

    send(first, "asked after coming back")
    for tab in tabs:
        wait_answers(tab, asked + 1)
        assert rendered_text(tab) == stored_answer(tab, cid)["content"]
        assert answers(tab) == asked + 1
        tab.wait_for_function("() => document.querySelector('#connection').dataset.state === 'live'")
        assert tab.errors == []  # type: ignore[attr-defined]
    assert node.metric("streamfan_sockets_open") == 1  # one stream for the browser, whoever leads
