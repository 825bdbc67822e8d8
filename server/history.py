"""The one replay loop: a conversation's history after a cursor, page by page.

A connecting client's catch-up and the gap fill after a pub/sub reconnect both read through it, so
they follow one rule: a cursor the history cannot honour (trimmed by retention, or from history
Redis lost) yields one ``Reset`` at the head and ends the replay. Whatever comes after the head
arrives live, because every caller subscribes before it reads.
"""

from collections.abc import AsyncIterator

from server.store import ConversationStore, Page, Reset
from wire.events import EventId, format_event_id


async def history_after(
    store: ConversationStore, conversation_id: str, cursor: EventId, page_size: int
) -> AsyncIterator[Page | Reset]:
    """Pages of events after ``cursor`` (``(0, 0)``: from the start), oldest first, or ending in a Reset."""
    after = format_event_id(cursor)
    while True:
        page = await store.replay(conversation_id, after, page_size)
        if isinstance(page, Reset):
            yield page
            return
        if page.frames:
            yield page
            after = format_event_id(page.frames[-1][0])
        if len(page.frames) < page_size and not page.more:
            return
