"""Any number of tabs and conversations on one connection, in Chromium, against the README's command.

`python -m server` (the embedded default) serves 20 tabs over 12 conversations in one browser
context: every tab loads and goes live, every answer streams live in every tab and ends equal to the
history, and the node holds ONE event stream for the whole browser. Then the node restarts (the
embedded broker forgets everything) and the page says the conversation is gone.
"""

import subprocess
import sys

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.conftest import ROOT, EmbeddedNode
from tests.test_web_e2e import open_page, rendered_text, send, wait_finished

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # slow: Chromium

CONVERSATIONS = 12
TABS = 20


def start_conversation(page: Page, text: str) -> str:
    page.click("#new-chat")
    send(page, text)
    page.wait_for_url("**/c/*")
    wait_finished(page)
    return page.url.rsplit("/", 1)[1]


def many_tabs(context: BrowserContext, base: str) -> list[Page]:
    """20 tabs over 12 conversations: each loads its conversation and goes live, all answer at once,
    each tab ends with the stored answer. Returns the tabs (open)."""
    first = open_page(context, base + "/")
    ids = [start_conversation(first, f"warm up {i}") for i in range(CONVERSATIONS)]
    tabs: list[Page] = []
    for i in range(TABS):
        cid = ids[i % CONVERSATIONS]
        tab = open_page(context, f"{base}/c/{cid}")
        tab.wait_for_selector("article.msg.assistant[data-status=complete]", state="attached", timeout=5_000)
        tab.wait_for_selector("#connection[data-state=live]", timeout=5_000)
        tabs.append(tab)
    first.close()
    # Every conversation answers at once; every tab of it streams the answer live.
    for i in range(CONVERSATIONS):
        send(tabs[i], f"answer number {i} " + " ".join(f"w{i}.{k}" for k in range(30)))
    for i, tab in enumerate(tabs):
        tab.wait_for_selector("article.msg.assistant:nth-of-type(4)", state="attached", timeout=20_000)
        wait_finished(tab)
        cid = ids[i % CONVERSATIONS]
        stored = tab.evaluate(f"fetch('/api/conversations/{cid}').then(r => r.json())")
        assert rendered_text(tab) == stored["messages"][-1]["content"]
        assert stored["messages"][-1]["content"].startswith(f"answer number {i % CONVERSATIONS} ")
    assert all(not tab.errors for tab in tabs)  # type: ignore[attr-defined]
    return tabs


def test_twenty_tabs_over_twelve_conversations_share_one_stream(node: EmbeddedNode, context: BrowserContext) -> None:
    many_tabs(context, node.url)
    assert node.metric("streamfan_sockets_open") == 1  # one event stream for the whole browser


def test_a_restarted_embedded_node_says_the_conversation_is_gone(node: EmbeddedNode, context: BrowserContext) -> None:
    page = open_page(context, node.url + "/")
    send(page, " ".join(f"long{k}" for k in range(300)))
    page.wait_for_url("**/c/*")
    page.wait_for_function(
        "() => (document.querySelector('article.msg.assistant .md')?.innerText || '').includes('long10')",
        timeout=20_000,
    )
    node.stop()
    node.start()  # the embedded broker starts empty: the conversation no longer exists
    page.wait_for_selector("#error:not([hidden])", timeout=5_000)
    assert "does not exist" in page.locator("#error").inner_text()
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    send(page, "a new conversation works")  # the composer works again
    page.wait_for_url(lambda url: "/c/" in url and url.rsplit("/", 1)[1] not in ("",))
    wait_finished(page)
    assert rendered_text(page) == "a new conversation works"


def test_errors_are_said_in_plain_words(node: EmbeddedNode, context: BrowserContext) -> None:
    page = open_page(context, node.url + "/c/not-an-id")
    page.wait_for_selector("#error:not([hidden])", timeout=5_000)
    assert "not a conversation" in page.locator("#error").inner_text()
    node.stop()
    send(page, "nobody is there")
    page.wait_for_function("() => document.querySelector('#error').innerText.includes('Could not reach the server')")
    assert "Failed to fetch" not in page.locator("#error").inner_text()


def test_a_busy_port_says_which_option_to_use(node: EmbeddedNode) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "--port", str(node.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and f"port {node.port}" in done.stderr and "--port" in done.stderr


def test_titles_are_plain_and_conversations_can_be_renamed_and_deleted(
    node: EmbeddedNode, context: BrowserContext
) -> None:
    page = open_page(context, node.url + "/")
    send(page, "## **Streaming** _answers_ to `many` tabs\n\nwith details")
    page.wait_for_url("**/c/*")
    cid = page.url.rsplit("/", 1)[1]
    wait_finished(page)
    link = page.locator(f"#conversation-list a[href='/c/{cid}']")
    assert link.inner_text() == "Streaming answers to many tabs with details"
    page.once("dialog", lambda dialog: dialog.accept("Renamed by hand"))
    page.click(f"#conversation-list button.rename-chat[data-id='{cid}']")
    page.wait_for_function(
        # A function, not an expression: Playwright evals a bare expression in the page, which the
        # page's CSP (no 'unsafe-eval') refuses whenever the first check is not already true.
        f"() => document.querySelector(`#conversation-list a[href='/c/{cid}']`).innerText === 'Renamed by hand'"
    )
    assert page.locator("#title").inner_text() == "Renamed by hand"
    page.reload()  # the name is kept, not replaced by the first message's
    page.wait_for_selector("#connection[data-state=live]")
    assert page.locator(f"#conversation-list a[href='/c/{cid}']").inner_text() == "Renamed by hand"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#conversation-list button.delete-chat[data-id='{cid}']")
    page.wait_for_function(f"() => !document.querySelector(`#conversation-list a[href='/c/{cid}']`)")
    assert page.url.endswith("/") and page.locator("article.msg").count() == 0
    status = page.evaluate(f"fetch('/api/conversations/{cid}').then(r => r.status)")
    assert status in (401, 404)  # deleted on the node, its cookie no longer opens it
