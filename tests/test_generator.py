"""The simulated LLM: deterministic, realistic, about the prompt, and paced."""

import asyncio
import cProfile
import pstats
from collections.abc import AsyncGenerator
from typing import cast

import pytest

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


async def test_a_token_s_wait_costs_no_python_callback_and_no_loop_lookup() -> None:
    """Issue 26: ``asyncio.sleep`` per token per answer (a loop lookup, a ``getpid`` system call on
    Python 3.11, and a Python callback when it fires) was the simulated model's cost, which in the
    end-to-end runs was as much CPU as the producer's own. The wait is a timer on a future of its own."""
    fast = Pacing(ttft_seconds=0, tokens_per_second=2000, jitter=0)
    profile = cProfile.Profile()
    profile.enable()
    chunks = [c async for c in EchoGenerator(fast).generate("a b c d e f g h i j k l m n o p", 100)]
    profile.disable()
    assert len(chunks) == 16
    ran = {name: row[1] for (_, _, name), row in pstats.Stats(profile).stats.items()}  # type: ignore[attr-defined]
    # The first token's wait only (a coroutine's call and its resumption count two):
    assert ran.get("sleep", 0) <= 2 and ran.get("_set_result_unless_cancelled", 0) <= 1
    assert ran.get("<built-in method _asyncio.get_running_loop>", 0) <= 2  # per answer, not per token


async def test_a_model_stopped_while_it_waits_leaves_no_timer_behind() -> None:
    """Cancelled (the answer was cancelled) or closed (the producer stopped reading) while it waits
    for a token's time, the wait's timer is cancelled: it would set a result on a cancelled future."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    slow = Pacing(ttft_seconds=0, tokens_per_second=20, jitter=0)

    async def read_all() -> None:
        async for _ in EchoGenerator(slow).generate("a b c", 100):
            pass

    reading = asyncio.create_task(read_all())
    await asyncio.sleep(0.01)  # the first token is out; the second is 50 ms away
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    stream = cast(AsyncGenerator[str, None], EchoGenerator(slow).generate("a b c", 100))
    await anext(stream)
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    waiting.cancel()  # (a generator is closed by the task that reads it; here it is cancelled, then closed)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    await asyncio.sleep(0.1)  # past both timers' times
    loop.set_exception_handler(None)
    assert errors == []
