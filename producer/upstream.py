"""A real model behind streamfan: any OpenAI-compatible server, through the official ``openai`` package.

``STREAMFAN_GENERATOR=openai`` streams Chat Completions from ``OPENAI_BASE_URL`` (OpenAI, vLLM,
llama.cpp's server, Ollama's ``/v1``, LiteLLM...) with ``OPENAI_API_KEY`` and
``STREAMFAN_OPENAI_MODEL``. The conversation's finished messages become the upstream ``messages``
(after ``STREAMFAN_OPENAI_SYSTEM_PROMPT``, if any).

- Failures before the first token are retried with jittered backoff (``STREAMFAN_OPENAI_RETRIES``):
  a refused or failed request, and a stream lost or ended before any text (after its role chunk,
  say); nothing was published, so nothing is doubled. After the first token, or past the retries,
  the answer ends ``failed`` with a reason a reader can be shown.
- Closing the chunk iterator (a cancel, a shutdown) closes the upstream HTTP response, so the model
  server stops generating.
- At most ``STREAMFAN_OPENAI_CONCURRENCY`` requests per producer are in flight upstream.
- The usage (tokens in and out) and the upstream's finish reason (``length``) are kept on the call.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI

from producer.generation import Completion, GenerationFailed
from support.backoff import Backoff
from support.env import SettingsError, env_secret, read_settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    base_url: str = setting("", "OPENAI_BASE_URL")
    """The OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1 (Ollama); empty: api.openai.com."""
    api_key: str = field(default="", repr=False)
    """OPENAI_API_KEY (a placeholder is sent when empty: local servers accept any)."""
    model: str = setting("gpt-4o-mini", "STREAMFAN_OPENAI_MODEL")
    """The model name the server knows."""
    temperature: float = setting(0.7, "STREAMFAN_OPENAI_TEMPERATURE", low=0, high=2)
    """Sampling temperature."""
    system_prompt: str = setting("", "STREAMFAN_OPENAI_SYSTEM_PROMPT")
    """Sent first in every conversation (empty: none)."""
    timeout_seconds: float = setting(60.0, "STREAMFAN_OPENAI_TIMEOUT_SECONDS", low=1, high=3600)
    """Bound on connecting, on the first token, and on every gap between tokens."""
    retries: int = setting(2, "STREAMFAN_OPENAI_RETRIES", low=0, high=10)
    """Retries of a request that failed before its first token."""
    concurrency: int = setting(64, "STREAMFAN_OPENAI_CONCURRENCY", low=1, high=10_000)
    """Requests this producer keeps in flight upstream at once; more wait their turn."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        settings = read_settings(cls, env, api_key=env_secret(env, "OPENAI_API_KEY"))
        url = urlsplit(settings.base_url)
        if settings.base_url and (url.scheme not in ("http", "https") or not url.hostname):
            # Accepted as it was, every answer would fail later with "Connection error.".
            raise SettingsError(
                f"OPENAI_BASE_URL={settings.base_url!r} is not an http(s) URL (e.g. http://host:8000/v1)"
            )
        return settings


class OpenAIGenerator:
    """A ``Generator`` (and ``WithHistory``) streaming from an OpenAI-compatible server."""

    def __init__(self, settings: UpstreamSettings, client: AsyncOpenAI | None = None) -> None:
        self.settings = settings
        self._client = client or AsyncOpenAI(
            base_url=settings.base_url or None,
            api_key=settings.api_key or "not-needed",
            timeout=settings.timeout_seconds,
            max_retries=0,  # retries are ours: only before the first token
        )
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def aclose(self) -> None:
        """Close the HTTP client (the process that made this generator calls it when it stops)."""
        await self._client.close()

    def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        return self.generate_with_history([{"role": "user", "content": prompt}], max_tokens, Completion())

    async def generate_with_history(
        self, history: Sequence[Mapping[str, str]], max_tokens: int, completion: Completion
    ) -> AsyncIterator[str]:
        """The answer's text chunks for a conversation whose messages are ``history`` (oldest first)."""
        messages: list[Any] = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": self.settings.system_prompt})
        messages += [{"role": m["role"], "content": m["content"]} for m in history]
        async with self._slots:
            backoff = Backoff(first=0.5, cap=5.0)
            attempt = 0
            while True:
                stream = await self._open(messages, max_tokens)
                answered = False
                try:
                    async with contextlib.aclosing(self._texts(stream, completion)) as texts:
                        async for text in texts:
                            answered = True
                            yield text
                    if answered or completion.finish_reason is not None:
                        return
                    failure: str = "the model ended without an answer"
                except TimeoutError:
                    failure = "the model stopped answering (timed out)"
                except openai.APIError as exc:
                    failure = f"the model failed mid-answer ({_brief(exc)})"
                finally:
                    await stream.close()  # a cancel closes the HTTP response: the server stops generating
                # Nothing was published yet: asking again doubles nothing (the README's promise).
                attempt += 1
                if answered or attempt > self.settings.retries:
                    raise GenerationFailed(failure)
                delay = backoff.next_delay()
                log.warning(
                    "upstream answer lost before its first token (%s); retry %d in %.1fs", failure, attempt, delay
                )
                await asyncio.sleep(delay)

    async def _texts(self, stream: Any, completion: Completion) -> AsyncGenerator[str, None]:
        """The stream's text pieces; its finish reason and usage go into ``completion``. A piece
        that ends with the first half of a UTF-16 surrogate pair (a server that slices text by
        code unit: JSON can spell ``"\\ud83d"``) keeps it for the next piece, where its other half
        is; one with no other half is made U+FFFD on the way to Redis (``wire.events.delta_text``)."""
        chunks = stream.__aiter__()
        held = ""
        while True:
            # The timeout spans the wait for the next chunk only, never this generator's consumer
            # (a timeout across a yield would cancel whoever is iterating).
            try:
                async with asyncio.timeout(self.settings.timeout_seconds):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                if held:
                    yield held
                return
            if chunk.usage is not None:
                completion.prompt_tokens = chunk.usage.prompt_tokens
                completion.completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.finish_reason:
                    completion.finish_reason = choice.finish_reason
                if choice.delta and choice.delta.content:
                    text = held + choice.delta.content if held else choice.delta.content
                    held = ""
                    if "\ud800" <= text[-1] <= "\udbff":
                        text, held = text[:-1], text[-1]
                    if text:
                        yield text

    async def _open(self, messages: list[Any], max_tokens: int) -> Any:
        """The upstream stream, retried with backoff while nothing was generated yet."""
        backoff = Backoff(first=0.5, cap=5.0)
        attempt = 0
        while True:
            try:
                return await self._client.chat.completions.create(
                    model=self.settings.model,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=self.settings.temperature,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError) as exc:
                error: openai.APIError = exc
            except openai.APIStatusError as exc:
                if exc.status_code < 500:
                    raise GenerationFailed(f"the model refused the request ({_brief(exc)})") from None
                error = exc
            attempt += 1
            if attempt > self.settings.retries:
                raise GenerationFailed(f"the model could not be reached ({_brief(error)})")
            delay = backoff.next_delay()
            log.warning("upstream request failed (%s); retry %d in %.1fs", _brief(error), attempt, delay)
            await asyncio.sleep(delay)


def _brief(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(getattr(exc, "message", "") or exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return f"{status}: {text}" if status else text
