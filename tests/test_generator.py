"""The simulated LLM: deterministic, realistic, about the prompt, and paced."""

import asyncio
from collections.abc import AsyncGenerator
from typing import cast

from producer.generator import EchoGenerator, Pacing, SimulatedLLM, compose_answer, tokens


def test_answers_are_deterministic_realistic_and_about_the_prompt() -> None:
    answer = compose_answer("How do Redis streams work?")
    assert answer == compose_answer("How do Redis streams work?")
    assert answer != compose_answer("Tell me about kangaroos")
    assert "Redis" in answer and "```python" in answer and "\n1. " in answer and "| aspect |" in answer
    assert "\n\n  Indented" in answer and "✅" in answer and "日本語" in answer


def test_tokens_keep_every_character_and_leading_spaces() -> None:
    text = "  lead\r\nnext  line\n\n🚀 end "
    parts = tokens(text)
    assert "".join(parts) == text and parts[0] == "  lead" and " end" in parts


async def test_generation_is_paced_and_stops_when_asked() -> None:
    fast = Pacing(ttft_seconds=0.05, tokens_per_second=200, jitter=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = [c async for c in EchoGenerator(fast).generate("a b c d e", 100)]
    elapsed = loop.time() - started
    assert "".join(chunks) == "a b c d e" and elapsed >= 0.05 + 4 / 200
    stream = cast(AsyncGenerator[str, None], SimulatedLLM(fast).generate("anything", 3))
    first = [await anext(stream) for _ in range(3)]
    await stream.aclose()  # the producer stops a generator it no longer needs
    assert len(first) == 3
