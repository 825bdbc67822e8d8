"""What a generator is, for the producer: the interface every model behind streamfan implements.

``Generator`` yields an answer's chunks; ``WithHistory`` answers from the whole conversation;
``Resumable`` can continue an answer another producer started; ``Completion`` and
``GenerationFailed`` carry what a generation learnt besides its text.
"""

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class GenerationFailed(Exception):
    """The model could not write the answer; ``str(self)`` says why, in words a reader can be shown."""


@dataclass(slots=True)
class Completion:
    """What one generation learnt besides its text, filled in as its stream ends."""

    finish_reason: str | None = None
    """The model's own: ``length`` ends the answer as ``length``."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Generator(Protocol):
    def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        """Yield the answer's chunks in order; the producer stops after ``max_tokens`` of them."""
        ...


@runtime_checkable
class WithHistory(Protocol):
    """A generator that answers from the whole conversation, not only the last message."""

    def generate_with_history(
        self, history: Sequence[Mapping[str, str]], max_tokens: int, completion: Completion
    ) -> AsyncIterator[str]:
        """Yield the chunks answering ``history`` (``role``/``content`` dicts, oldest first); fill
        ``completion`` (finish reason, usage) as the stream ends; raise ``GenerationFailed`` with a
        reason a reader can be shown."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A generator that can continue an answer another producer started (``STREAMFAN_TAKEOVER``)."""

    def resume(self, prompt: str, max_tokens: int, text_so_far: str, chunks_so_far: int) -> AsyncIterator[str]:
        """Yield the chunks that follow ``text_so_far`` (``chunks_so_far`` chunks were published)."""
        ...
