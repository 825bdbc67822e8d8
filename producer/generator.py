"""Generators of answers: the producer streams whatever chunks a ``Generator`` yields.

``SimulatedLLM`` stands in for a model: seeded by the prompt, it writes a plausible markdown answer
about the prompt's words (headings, lists, a code block, a table, unicode and emoji, leading spaces
and blank lines) and paces it like a model: a time to first token, then tokens at a rate with jitter.
A real model plugs in as ``STREAMFAN_GENERATOR=package.module:factory``.
"""

import asyncio
import importlib
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from producer.generation import Generator

_TOKEN_RE = re.compile(r"\s*\S+|\s+")
_WORD_RE = re.compile(r"[^\W_]{3,}", re.UNICODE)
_STOPWORDS = frozenset(
    "the and for with that this what how why are you your can from about into tell explain please give "
    "show does could would should there their them they".split()
)


@dataclass(frozen=True, slots=True)
class Pacing:
    """How fast a simulated model writes: a time to first token, then tokens at a rate with jitter."""

    ttft_seconds: float = 0.3
    tokens_per_second: float = 40.0
    jitter: float = 0.3
    """Each gap between tokens is drawn from (1 ± jitter) / tokens_per_second."""
    seed: int = 0

    async def pace(self, chunks: list[str], max_tokens: int, *, first_token: bool = True) -> AsyncIterator[str]:
        rng = random.Random(f"{self.seed}:pace:{len(chunks)}")
        if first_token:
            await asyncio.sleep(self.ttft_seconds * (1 + self.jitter * (rng.random() * 2 - 1)))
        interval = 1.0 / self.tokens_per_second
        loop = asyncio.get_running_loop()
        due = loop.time()
        # The producer, not the generator, stops at max_tokens: it can then tell "length" from "stop".
        for chunk in chunks:
            yield chunk
            # Pace against a schedule, not by sleeping a gap after each chunk, so publishing time
            # does not slow the stream down.
            due += interval * (1 + self.jitter * (rng.random() * 2 - 1))
            if due > loop.time():
                # ``asyncio.sleep`` without its loop lookup (a ``getpid`` system call on Python 3.11)
                # and its callback in Python: a timer per token per answer is this model's cost, as
                # much CPU as the producer's own (docs/measurements.md, pacing-timer).
                woken = loop.create_future()
                timer = loop.call_at(due, woken.set_result, None)
                try:
                    await woken
                except BaseException:  # cancelled or closed while it waits: the timer must not fire
                    timer.cancel()
                    raise


@dataclass(frozen=True, slots=True)
class SimulatedLLM:
    """The default generator: a realistic markdown answer about the prompt."""

    pacing: Pacing = Pacing()

    def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        return self.pacing.pace(tokens(compose_answer(prompt, self.pacing.seed)), max_tokens)

    def resume(self, prompt: str, max_tokens: int, text_so_far: str, chunks_so_far: int) -> AsyncIterator[str]:
        """The same answer (it is seeded by the prompt) after the chunks already published."""
        chunks = tokens(compose_answer(prompt, self.pacing.seed))[chunks_so_far:]
        return self.pacing.pace(chunks, max_tokens, first_token=False)


@dataclass(frozen=True, slots=True)
class EchoGenerator:
    """Answers with the prompt itself, byte for byte: for tests and for checking a deployment."""

    pacing: Pacing = Pacing()

    def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        return self.pacing.pace(tokens(prompt), max_tokens)

    def resume(self, prompt: str, max_tokens: int, text_so_far: str, chunks_so_far: int) -> AsyncIterator[str]:
        return self.pacing.pace(tokens(prompt)[chunks_so_far:], max_tokens, first_token=False)


def tokens(text: str) -> list[str]:
    """Split like a tokenizer would for streaming: words keep their leading whitespace."""
    return _TOKEN_RE.findall(text)


def _topic_words(prompt: str) -> list[str]:
    words = [w for w in _WORD_RE.findall(prompt) if w.lower() not in _STOPWORDS]
    return list(dict.fromkeys(words)) or ["streaming"]


def compose_answer(prompt: str, seed: int = 0) -> str:
    """A deterministic, realistic markdown answer about ``prompt``."""
    rng = random.Random(f"{seed}:{prompt}")
    words = _topic_words(prompt)
    topic = " ".join(words[:3])
    main = words[0]
    emoji = rng.choice(["🚀", "✨", "🙂", "📚", "🔧", "🧪", "🌍"])
    intros = [
        f"Great question about **{topic}**! {emoji}",
        f"Here's how I'd think about *{topic}* — step by step.",
        f"Sure. Let's look at {topic} from a few angles {emoji}",
    ]
    points = [
        f"Start from what `{main}` has to guarantee, then measure it.",
        f"Keep the {main} path simple: one job per part, and names that say it.",
        "Prefer boring, well-tested building blocks over clever ones.",
        "Watch the edge cases: empty input, very long input, and “unicode” like naïve café — 日本語 too.",
        f"Write down what {topic} promises, next to the code that keeps the promise.",
    ]
    rng.shuffle(points)
    ident = re.sub(r"\W+", "_", main.lower()).strip("_") or "topic"
    code = (
        "```python\n"
        f"def explain_{ident}(question: str) -> str:\n"
        f'    """Answer a question about {main}."""\n'
        '    steps = [s.strip() for s in question.split(",")]\n'
        '    return "\\n".join(f"- {s}" for s in steps)\n'
        "```"
    )
    table = (
        "| aspect | why it matters |\n"
        "|---|---|\n"
        f"| correctness | {main} must never lose data |\n"
        "| latency | people notice > 100 ms |"
    )
    parts = [
        rng.choice(intros),
        f"## {main.capitalize()} in short",
        "\n".join(f"{i}. {p}" for i, p in enumerate(points[: rng.randint(3, 5)], 1)),
        "A small example:",
        code,
        table,
        "  Indented note: leading spaces are kept exactly.",
        f"In short: {topic} works best when it is *measured*, not assumed. ✅",
    ]
    return "\n\n".join(parts)


async def close_generator(generator: Generator) -> None:
    """Release what a generator holds (an HTTP client), if it holds anything."""
    aclose = getattr(generator, "aclose", None)
    if aclose is not None:
        await aclose()


def load_generator(spec: str, pacing: Pacing) -> Generator:
    """``simulated`` (the default), ``echo``, ``openai`` (an OpenAI-compatible server, see
    ``producer.upstream``), or ``package.module:factory`` returning a Generator."""
    if spec == "openai":
        from producer.upstream import OpenAIGenerator, UpstreamSettings

        return OpenAIGenerator(UpstreamSettings.from_env())
    if spec == "simulated":
        return SimulatedLLM(pacing)
    if spec == "echo":
        return EchoGenerator(pacing)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"STREAMFAN_GENERATOR={spec!r}: use 'simulated', 'echo', 'openai' or 'package.module:factory'")
    factory: Callable[[], Generator] = getattr(importlib.import_module(module_name), attr)
    return factory()
