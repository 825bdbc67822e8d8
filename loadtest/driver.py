"""The load tester's driver: creates the conversations, posts messages, and reads the history back.

It follows no stream of its own: each conversation's reporting tab (in a worker) tells it when an
answer starts and ends, so the driver adds no load the tabs do not see.
"""

import asyncio
import hashlib
import queue
import time
from typing import Any

import aiohttp

from loadtest.config import Config
from loadtest.messages import Sighting
from loadtest.stats import Series


class Driver:
    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.ttft = Series()
        self.posted = 0
        self.answers_done = 0
        self.post_errors = 0
        self.reserved = 0
        self.first_posts: list[float] = []
        """When each conversation posted its first message (``time.monotonic``)."""
        self._answers: dict[str, _Answer] = {}

    def answer(self, response_id: str) -> "_Answer":
        """What the reporting tab saw of an answer so far (whichever of post and report comes first)."""
        state = self._answers.get(response_id)
        if state is None:
            state = self._answers[response_id] = _Answer()
        return state

    async def take_reports(self, answers: Any) -> None:
        """Feed the reporting tabs' first-chunk and done sightings to the waiting conversations."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sighting: Sighting = await loop.run_in_executor(None, answers.get, True, 0.2)
            except queue.Empty:
                continue
            state = self.answer(sighting.response_id)
            if sighting.kind == "first":
                state.first_at = sighting.at
            else:
                state.done.set()

    async def create(self, url: str) -> tuple[str, str]:
        async with self.session.post(f"{url}/api/conversations") as resp:
            resp.raise_for_status()
            body = await resp.json()
            return body["id"], body["token"]

    async def converse(self, url: str, cid: str, token: str, until: float) -> None:
        """Post, wait for done, think, repeat until ``until``; time post → first delta."""
        auth = {"Authorization": f"Bearer {token}"}
        n = 0
        limit = self.config.answers
        while time.monotonic() < until:
            if limit is not None:
                if self.reserved >= limit:
                    break
                self.reserved += 1  # taken before the post: conversations post concurrently
            n += 1
            if n == 1:
                self.first_posts.append(time.monotonic())
            posted_at = time.time()
            body = {"content": f"{self.config.prompt} (#{n})", "max_tokens": self.config.max_tokens}
            async with self.session.post(f"{url}/api/conversations/{cid}/messages", json=body, headers=auth) as resp:
                if resp.status != 202:
                    self.post_errors += 1
                    if limit is not None:
                        self.reserved -= 1
                    await asyncio.sleep(0.5)
                    continue
                response_id = (await resp.json())["response_id"]
            self.posted += 1
            # The conversation's reporting tab (in a worker) says when the answer starts and ends: the
            # driver follows no stream of its own, so it adds no load the tabs do not see.
            state = self.answer(response_id)
            await state.done.wait()
            del self._answers[response_id]
            if state.first_at is not None:
                self.ttft.add((state.first_at - posted_at) * 1000)
            self.answers_done += 1
            if self.config.think_time:
                await asyncio.sleep(self.config.think_time)

    async def history_digests(self, url: str, cid: str, token: str) -> dict[str, str]:
        """Every finished answer the conversation keeps, page by page from the newest (one page is
        200 messages by default: a long run verified against it alone failed answers it never lost)."""
        digests: dict[str, str] = {}
        before: int | None = None
        while before != 0:
            query = f"?limit={_HISTORY_PAGE}" + ("" if before is None else f"&before={before}")
            async with self.session.get(
                f"{url}/api/conversations/{cid}{query}", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                resp.raise_for_status()
                page = await resp.json()
            for m in page["messages"]:
                if m["role"] == "assistant" and m.get("finish_reason"):
                    digests[m["id"]] = hashlib.sha256(m["content"].encode()).hexdigest()
            before = int(page["first_position"])
        return digests


_HISTORY_PAGE = 1000
"""The history API's largest page."""


class _Answer:
    __slots__ = ("done", "first_at")

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.done = asyncio.Event()
