"""The chat page in a real headless Chromium (Debian's, driven by Playwright), behind nginx.

Longer than 300 lines: every page test shares one browser and one real cluster (module fixtures).

The cluster is real: Redis, a producer and two nodes behind nginx, so the browser's six-connections-
per-host limit and the balancer's refusals (a JSON 503 when no node answers) are the real ones. The
producer echoes the prompt, so each test knows the answer it expects; every test also compares with
the stored history.
"""

import http.server
import json
import signal
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, sync_playwright

from launch.cluster import LocalCluster
from launch.processes import free_port
from tests.conftest import CHROMIUM_ARGS, ROOT, chromium_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # slow: Chromium

ARTIFACTS = ROOT / "test-artifacts"
ANSWER_WAIT_MS = 60_000

TRICKY = (
    "  two leading spaces stay\n"
    'line two — naïve café 日本語 🚀 <b>not bold</b> & "quotes" </script>\n'
    "\n"
    "second paragraph"
)
LONG = " ".join(f"word{i}" for i in range(150))
MARKDOWN = (
    "Here is **bold**, *italic*, `inline code` and a [link](https://example.com/docs).\n"
    "\n"
    "1. first step\n"
    "2. second step\n"
    "\n"
    "```python\n"
    "def greet(name: str) -> str:\n"
    '    return f"hello {name}"\n'
    "```\n"
    "\n"
    "| aspect | value |\n"
    "|---|:-:|\n"
    "| latency | low |\n"
    "| loss | none |\n"
    "\n"
    "  Indented note: leading spaces are kept."
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {
        "STREAMFAN_GENERATOR": "echo",
        "STREAMFAN_SIM_TTFT_MS": "50",
        "STREAMFAN_SIM_TOKENS_PER_SECOND": "40",
        "STREAMFAN_SIM_JITTER": "0",
        "STREAMFAN_RETRY_MS": "300",
        "STREAMFAN_HEARTBEAT_SECONDS": "2",
    }
    cluster = LocalCluster(nodes=2, producers=1, env=env, workdir=tmp_path_factory.mktemp("web-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    try:
        yield context
    finally:
        context.close()


def open_page(context: BrowserContext, url: str) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.errors = errors  # type: ignore[attr-defined]
    return page


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def last_answer(page: Page) -> Any:
    return page.locator("article.msg.assistant").last


def wait_finished(page: Page, status: str = "complete") -> None:
    page.wait_for_selector(
        f"article.msg.assistant:last-of-type[data-status={status}]", timeout=ANSWER_WAIT_MS, state="attached"
    )


def rendered_text(page: Page) -> str:
    return str(last_answer(page).locator(".md:not([hidden])").evaluate("el => el.innerText"))


def conversation_id(page: Page) -> str:
    page.wait_for_url("**/c/*")
    return page.url.rsplit("/", 1)[1]


def stored(page: Page, cid: str) -> dict[str, Any]:
    """The history API's view, fetched by the page itself (its cookie is the credential)."""
    return dict(page.evaluate(f"fetch('/api/conversations/{cid}').then(r => r.json())"))


def settle(page: Page) -> None:
    """Until what an input set off has run: a frame, then the tasks queued before it."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))")


def stored_answer(page: Page, cid: str) -> dict[str, Any]:
    return dict(stored(page, cid)["messages"][-1])


def tabs_on_one_conversation(cluster: LocalCluster, context: BrowserContext, count: int) -> tuple[str, list[Page]]:
    """A conversation started in one tab (the stream's leader), then opened in ``count - 1`` more, all live."""
    first = open_page(context, cluster.url + "/")
    send(first, "hello")
    cid = conversation_id(first)
    wait_finished(first)
    tabs = [first] + [open_page(context, f"{cluster.url}/c/{cid}") for _ in range(count - 1)]
    for tab in tabs:
        tab.wait_for_selector("#connection[data-state=live]", timeout=20_000)
    return cid, tabs


def test_one_tab_renders_the_stored_answer_exactly(cluster: LocalCluster, context: BrowserContext) -> None:
    page = open_page(context, cluster.url + "/")
    send(page, TRICKY)
    cid = conversation_id(page)
    wait_finished(page)
    assert stored_answer(page, cid)["content"] == TRICKY
    assert rendered_text(page) == TRICKY
    assert page.locator("article.msg.user .bubble").first.inner_text() == TRICKY
    assert page.locator("#connection").get_attribute("data-state") == "live"
    assert page.locator("#status").inner_text() == "Response complete"

    # Markdown renders while streaming; code is highlighted once its fence closes.
    send(page, MARKDOWN)
    page.wait_for_selector("article.msg.assistant:nth-of-type(4)", state="attached")
    wait_finished(page)
    answer = last_answer(page)
    assert answer.locator("strong").inner_text() == "bold" and answer.locator("em").inner_text() == "italic"
    assert answer.locator("ol > li").count() == 2
    assert answer.locator(".code-lang").inner_text() == "python"
    code = answer.locator(".code-block code")
    # CommonMark: a code block's text ends with its last line's newline.
    assert code.evaluate("el => el.textContent") == 'def greet(name: str) -> str:\n    return f"hello {name}"\n'
    code.locator("span.hljs-keyword").first.wait_for(state="attached")  # highlight.js loads with the first code
    assert "hljs" in (code.get_attribute("class") or "") and code.locator("span.hljs-keyword").count() >= 2
    assert answer.locator("table tbody tr").count() == 2 and answer.locator("td.align-center").count() == 2
    link = answer.locator("a[href='https://example.com/docs']")
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert "  Indented note" in rendered_text(page)
    assert stored_answer(page, cid)["content"] == MARKDOWN

    # The URL opens the same conversation, history included, in a new tab.
    other = open_page(context, page.url)
    wait_finished(other)
    assert other.locator("article.msg.assistant").count() == 2
    assert other.locator("article.msg.assistant").first.locator(".md").evaluate("el => el.innerText") == TRICKY
    assert page.errors == [] and other.errors == []  # type: ignore[attr-defined]


def test_ten_tabs_in_one_context_follow_one_conversation(cluster: LocalCluster, context: BrowserContext) -> None:
    streams: list[str] = []
    context.on("request", lambda r: streams.append(r.url) if "/api/stream" in r.url else None)
    cid, tabs = tabs_on_one_conversation(cluster, context, 10)
    send(tabs[4], LONG)  # from a tab that is not the leader
    for tab in tabs:
        tab.wait_for_selector("article.msg.assistant:nth-of-type(4)", state="attached", timeout=20_000)
    tabs[0].close()  # the leader goes away mid-answer: another tab takes the stream over
    for tab in tabs[1:]:
        wait_finished(tab)
    expected = stored_answer(tabs[1], cid)["content"]
    assert expected == LONG
    for tab in tabs[1:]:
        assert rendered_text(tab) == expected
        assert tab.locator("article.msg.assistant").count() == 2
    # One stream for ten tabs, then one more after the handover (not one per tab).
    assert 2 <= len(streams) <= 4, streams


def test_server_drop_mid_answer_reconnects_and_ends_exact(cluster: LocalCluster, context: BrowserContext) -> None:
    page = open_page(context, cluster.url + "/")
    send(page, LONG)
    cid = conversation_id(page)
    page.wait_for_function(
        "() => (document.querySelector('article.msg.assistant .md')?.innerText || '').includes('word10')",
        timeout=20_000,
    )
    nodes = cluster.node_members
    refused = lambda r: "/api/stream" in r.url and r.status >= 500  # noqa: E731
    with page.expect_response(refused, timeout=20_000):  # a 503 seen: EventSource gave up, the page retries
        for node in nodes:
            node.stop(signal.SIGKILL)  # every node gone: nginx answers 503 and EventSource gives up
        page.wait_for_selector("#connection[data-state=reconnecting]", timeout=20_000)
    for node in nodes:
        cluster.restart(node)
    wait_finished(page)
    expected = stored_answer(page, cid)["content"]
    assert expected == LONG
    assert rendered_text(page) == expected
    assert page.locator("#connection").get_attribute("data-state") == "live"


def test_stop_in_one_tab_ends_the_answer_in_every_tab(cluster: LocalCluster, context: BrowserContext) -> None:
    cid, tabs = tabs_on_one_conversation(cluster, context, 3)
    first = tabs[0]
    send(first, LONG)
    for tab in tabs:
        tab.wait_for_selector("#stop:not([hidden])", timeout=20_000)
    tabs[2].wait_for_function(
        "() => (document.querySelector('article.msg.assistant:last-of-type .md')?.innerText || '').includes('word5')"
    )
    tabs[2].click("#stop")
    for tab in tabs:
        wait_finished(tab, "cancelled")
        assert tab.locator("#send").is_visible() and not tab.locator("#stop").is_visible()
    stored_message = stored_answer(first, cid)
    assert stored_message["status"] == "cancelled" and 0 < len(stored_message["content"]) < len(LONG)
    for tab in tabs:
        assert rendered_text(tab) == stored_message["content"]
        assert last_answer(tab).locator(".finish-note").inner_text() == "Stopped"


class _Tracker(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012 - one tracker per test run

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_hostile_markdown_renders_inertly(cluster: LocalCluster, context: BrowserContext) -> None:
    port = free_port()
    tracker = http.server.HTTPServer(("127.0.0.1", port), _Tracker)
    thread = threading.Thread(target=tracker.serve_forever, daemon=True)
    thread.start()
    hostile = (
        '<img src=x onerror="window.__pwned=1">\n\n'
        "[click me](javascript:window.__pwned=2)\n\n"
        f"![remote](http://127.0.0.1:{port}/pixel.png)\n\n"
        "<script>window.__pwned=3</script>\n\n"
        f'<a href="http://127.0.0.1:{port}/a">html link</a> [data](data:text/html,<b>x</b>)'
    )
    try:
        page = open_page(context, cluster.url + "/")
        dialogs: list[str] = []
        requests: list[str] = []

        def dismiss(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", dismiss)
        page.on("request", lambda r: requests.append(r.url))
        send(page, hostile)
        cid = conversation_id(page)
        wait_finished(page)
        assert stored_answer(page, cid)["content"] == hostile
        answer = last_answer(page)
        assert answer.locator("img, script, iframe, object").count() == 0
        assert page.locator("a[href^='javascript:'], a[href^='data:']").count() == 0
        answer.locator(".unsafe-link").first.click()
        settle(page)
        assert page.evaluate("window.__pwned") is None and dialogs == []
        # The raw HTML shows as text, exactly.
        assert '<img src=x onerror="window.__pwned=1">' in rendered_text(page)
        assert "<script>window.__pwned=3</script>" in rendered_text(page)
        remote = answer.locator(".image-placeholder")
        assert remote.inner_text() == "🖼 remote"  # a link the reader may follow, never loaded
        assert _Tracker.hits == [] and not [u for u in requests if f":{port}/" in u]
        assert all(u.startswith(cluster.url) for u in requests), requests
    finally:
        tracker.shutdown()
        tracker.server_close()


def test_page_is_served_with_a_strict_policy(cluster: LocalCluster) -> None:
    with urllib.request.urlopen(cluster.url + "/") as resp:
        csp = resp.headers["Content-Security-Policy"]
        html = resp.read().decode()
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "img-src 'self' data:" in csp
    assert "<script>" not in html and "http://" not in html and "https://" not in html
    vendored = json.dumps(sorted(p.name for p in (ROOT / "web" / "vendor").iterdir()))
    assert "highlight.js-11.12.0" in vendored


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot_of_a_finished_conversation(cluster: LocalCluster, browser: Browser, scheme: str) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, color_scheme=scheme)  # type: ignore[arg-type]
    try:
        page = open_page(context, cluster.url + "/")
        send(page, MARKDOWN)
        wait_finished(page)
        page.locator("#log").evaluate("el => { el.scrollTop = 0; }")
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"chat-{scheme}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(255, 255, 255)") == (scheme == "light"), background
    finally:
        context.close()


def test_phone_width_keeps_the_composer_and_hides_the_sidebar(cluster: LocalCluster, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    try:
        page = open_page(context, cluster.url + "/")
        assert page.locator("#input").is_visible() and page.locator("#send").is_visible()
        assert not page.locator("#sidebar").is_visible() or page.locator("#sidebar").bounding_box()["x"] < 0  # type: ignore[index]
        page.click("#toggle-sidebar")
        assert page.locator("#toggle-sidebar").get_attribute("aria-expanded") == "true"
        page.wait_for_timeout(400)  # the sidebar slides in
        path = ARTIFACTS / "chat-phone.png"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(path))
        page.keyboard.press("Escape")
        assert page.locator("#toggle-sidebar").get_attribute("aria-expanded") == "false"
    finally:
        context.close()


def test_keyboard_scrolling_and_regenerate(cluster: LocalCluster, context: BrowserContext) -> None:
    page = open_page(context, cluster.url + "/")
    page.set_viewport_size({"width": 900, "height": 420})
    page.focus("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two"
    # Enter while an input method is composing must not send.
    page.dispatch_event("#input", "keydown", {"key": "Enter", "isComposing": True})
    settle(page)
    assert page.locator("article.msg").count() == 0
    page.keyboard.press("Enter")
    cid = conversation_id(page)
    wait_finished(page)
    assert rendered_text(page) == "line one\nline two"

    # Reading back up while an answer streams: no yanking down, a "jump to latest" control instead.
    send(page, LONG + "\n\n" + LONG)
    page.wait_for_function(
        "() => (document.querySelector('article.msg.assistant:last-of-type .md')?.innerText || '').includes('word40')"
    )
    page.locator("#log").evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    page.wait_for_selector("#jump:not([hidden])", timeout=10_000)
    page.wait_for_function(  # more of the answer arrived while the reader was up there
        "() => (document.querySelector('article.msg.assistant:last-of-type .md')?.innerText || '').includes('word80')"
    )
    assert page.locator("#log").evaluate("el => el.scrollTop") == 0
    page.keyboard.press("Escape")  # Esc stops the answer
    wait_finished(page, "cancelled")
    page.click("#jump")
    assert page.locator("#log").evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") < 48

    # Regenerate writes the last answer again, as a second version of it (the first is kept).
    users = page.locator("article.msg.user").count()
    stopped = stored(page, cid)["messages"][-1]
    page.locator("article.msg.assistant:last-of-type .regenerate").click()
    page.wait_for_selector("article.msg.assistant:last-of-type .versions:not([hidden])")
    wait_finished(page)
    assert page.locator("article.msg.assistant").count() == 2 and page.locator("article.msg.user").count() == users
    assert page.locator("article.msg.assistant:last-of-type .version-label").inner_text() == "2/2"
    latest = stored(page, cid)["messages"][-1]
    assert latest["replaces"] == stopped["id"] and latest["content"] == LONG + "\n\n" + LONG
    assert rendered_text(page) == latest["content"]
    page.locator("article.msg.assistant:last-of-type .version-prev").click()
    assert page.locator("article.msg.assistant:last-of-type .version-label").inner_text() == "1/2"
    assert rendered_text(page) == stopped["content"]


def test_a_reset_reloads_the_conversation_from_the_history_api(cluster: LocalCluster, context: BrowserContext) -> None:
    from wire.keys import ConversationKeys

    page = open_page(context, cluster.url + "/")
    send(page, "before the reset")
    cid = conversation_id(page)
    wait_finished(page)
    history_loads: list[str] = []
    page.on("request", lambda r: history_loads.append(r.url) if r.url.endswith(f"/api/conversations/{cid}") else None)
    nodes = cluster.node_members
    for node in nodes:
        node.stop(signal.SIGKILL)
    assert cluster.redis is not None
    cluster.redis.cli("XTRIM", ConversationKeys(cid).events, "MAXLEN", "0")  # the page's cursor is gone
    for node in nodes:
        cluster.restart(node)
    page.wait_for_selector("#connection[data-state=live]", timeout=30_000)
    page.wait_for_timeout(500)
    assert history_loads, "the reset did not reload the conversation"
    assert page.locator("article.msg.assistant").count() == 1 and rendered_text(page) == "before the reset"
    send(page, "after the reset")
    page.wait_for_function("() => document.querySelectorAll('article.msg.assistant').length === 2")
    wait_finished(page)
    assert rendered_text(page) == "after the reset"
    assert page.locator("article.msg.user").count() == 2


def test_a_late_history_answer_never_lands_under_another_conversation(
    cluster: LocalCluster, context: BrowserContext
) -> None:
    page = open_page(context, cluster.url + "/")
    send(page, "first conversation")
    first = conversation_id(page)
    wait_finished(page)
    page.click("#new-chat")
    send(page, "second conversation")
    second = conversation_id(page)
    wait_finished(page)

    # The first conversation's history answers late; the user opens the second one meanwhile.
    held: list[Any] = []
    page.route(f"**/api/conversations/{first}", lambda route: held.append(route))
    page.evaluate(f"document.querySelector(`a[href='/c/{first}']`).click()")
    page.wait_for_timeout(300)
    assert len(held) == 1
    page.evaluate(f"document.querySelector(`a[href='/c/{second}']`).click()")
    page.wait_for_selector("article.msg.user", state="attached")
    held[0].continue_()
    page.wait_for_timeout(700)
    assert page.url.endswith(second)
    assert page.locator("article.msg.user .bubble").all_inner_texts() == ["second conversation"]
    assert not page.errors  # type: ignore[attr-defined]


def test_twenty_tabs_over_twelve_conversations_through_nginx_over_http2(
    cluster: LocalCluster, browser: Browser
) -> None:
    from tests.test_web_tabs import many_tabs

    context = browser.new_context(ignore_https_errors=True, viewport={"width": 900, "height": 700})
    try:
        probe = open_page(context, cluster.tls_url + "/")
        assert probe.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        probe.close()
        many_tabs(context, cluster.tls_url)
        streams = 0
        for member in cluster.node_members:
            with urllib.request.urlopen(f"{member.url}/metrics", timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("streamfan_sockets_open "):
                        streams += int(float(line.split()[1]))
        assert streams == 1  # one event stream for the whole browser, on whichever node
        cookie = next(c for c in context.cookies() if c["name"] == "streamfan_token")
        assert cookie["secure"] and cookie["httpOnly"]  # https through the trusted balancer
    finally:
        context.close()
