"""The OpenAI-compatible endpoints, driven by the official ``openai`` SDK against a real node on real Redis.

Every client's text must equal the answer streamfan stored: the same conversation can be followed
through the native API with the conversation id and token the response names.
"""

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import openai
import pytest

from launch.processes import RedisServer
from tests.conftest import Proc
from tests.test_real_redis import producer_env

pytestmark = pytest.mark.timeout(90)

KEY = "sk-test-0123456789abcdef"
PROMPT = "streamed through the official SDK — naïve café 🚀"


@pytest.fixture
def node(redis_process: RedisServer, spawn: Callable[..., Proc]) -> Proc:
    served = spawn("server", {"REDIS_URL": redis_process.url, "STREAMFAN_API_KEYS": f"{KEY},another-key-0123456789"})
    spawn("producer", producer_env(redis_process, tokens_per_second=300))
    return served


def stored(node: Proc, conversation: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{node.url}/api/conversations/{conversation}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(json.loads(resp.read())["messages"][-1])


def test_the_python_sdk_streams_and_waits_and_the_answer_is_the_stored_one(node: Proc) -> None:
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["streamfan"]

    whole = client.chat.completions.with_raw_response.create(
        model="streamfan", messages=[{"role": "system", "content": "be kind"}, {"role": "user", "content": PROMPT}]
    )
    completion = whole.parse()
    assert completion.choices[0].message.content == PROMPT and completion.choices[0].finish_reason == "stop"
    answer = stored(node, whole.headers["X-Streamfan-Conversation"], whole.headers["X-Streamfan-Token"])
    assert answer["content"] == PROMPT

    raw = client.chat.completions.with_raw_response.create(
        model="streamfan",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (
        text
        == PROMPT
        == stored(node, raw.headers["X-Streamfan-Conversation"], raw.headers["X-Streamfan-Token"])["content"]
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_the_async_python_sdk_streams_too(node: Proc) -> None:
    client = openai.AsyncOpenAI(base_url=f"{node.url}/v1", api_key=KEY)
    try:
        stream = await client.chat.completions.create(
            model="streamfan", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == PROMPT
    finally:
        await client.close()


def test_a_wrong_key_is_refused_in_openai_form(node: Proc) -> None:
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="sk-wrong-0123456789abcdef")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=f"{node.url}/v1", api_key=KEY)
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model="streamfan", messages=[])


def test_without_keys_the_endpoints_do_not_exist(redis_process: RedisServer, spawn: Callable[..., Proc]) -> None:
    bare = spawn("server", {"REDIS_URL": redis_process.url})
    client = openai.OpenAI(base_url=f"{bare.url}/v1", api_key=KEY)
    with pytest.raises(openai.NotFoundError):
        client.models.list()


def test_a_node_chained_to_another_as_its_model_serves_the_sdk_and_a_cancel_reaches_the_first(
    redis_process: RedisServer, spawn: Callable[..., Proc]
) -> None:
    """streamfan as the model of streamfan (``OPENAI_BASE_URL`` at another node's ``/v1``), each on
    its own Redis: the SDK reads the upstream's answer through the chain, and cancelling on the
    downstream node cancels the upstream answer too (its Chat stream closed mid-answer)."""
    upstream = spawn("server", {"REDIS_URL": redis_process.url, "STREAMFAN_API_KEYS": KEY})
    spawn("producer", producer_env(redis_process, tokens_per_second=40))
    own = RedisServer()
    own.start()
    try:
        chained = spawn("server", {"REDIS_URL": own.url, "STREAMFAN_API_KEYS": KEY})
        model = {"OPENAI_BASE_URL": f"{upstream.url}/v1", "OPENAI_API_KEY": KEY, "STREAMFAN_OPENAI_MODEL": "m"}
        spawn("producer", {**producer_env(own), "STREAMFAN_GENERATOR": "openai", **model})
        client = openai.OpenAI(base_url=f"{chained.url}/v1", api_key=KEY)
        chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PROMPT
        assert run_js_clients(chained, "chained-chat", PROMPT) == {
            "openai": PROMPT,
            "chat": PROMPT,
            "resumedWhenIdle": True,
            "browserChat": PROMPT,
            "otherChatRefused": True,
        }

        long = " ".join(f"word{i}" for i in range(400))  # 10 s at 40 tokens/s upstream
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": long}], stream=True
        )
        conversation, token = raw.headers["X-Streamfan-Conversation"], raw.headers["X-Streamfan-Token"]
        stream = raw.parse()
        next(iter(stream))  # the answer is under way on both nodes
        cancel = urllib.request.Request(
            f"{chained.url}/api/conversations/{conversation}/cancel",
            data=b"{}",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(cancel, timeout=5) as resp:
            assert resp.status == 202
        stream.close()
        assert _upstream_answer_ends(redis_process, long) == "cancelled"
    finally:
        own.remove()


def _upstream_answer_ends(redis: RedisServer, prompt: str, within: float = 6.0) -> str:
    """How the upstream node's answer to ``prompt`` ended (its stored message), waiting for it."""
    import time

    import redis as redis_py

    client = redis_py.Redis(port=redis.port, decode_responses=True)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            for key in client.scan_iter(match="sf:*:messages"):
                turns = [json.loads(m) for m in client.lrange(key, 0, -1)]
                if (
                    any(t["role"] == "user" and t["content"] == prompt for t in turns)
                    and turns[-1]["role"] == "assistant"
                ):
                    return str(turns[-1]["finish_reason"])
            time.sleep(0.1)
        return "still running"
    finally:
        client.close()


def test_the_sdk_gets_refusals_in_its_own_shape_and_a_closed_stream_cancels_its_answer(node: Proc) -> None:
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key=KEY)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="streamfan", messages=[{"role": "user", "content": "hi"}], n=2)
    assert refused.value.param == "n" and refused.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as nul:
        client.chat.completions.create(model="streamfan", messages=[{"role": "user", "content": "a\x00b"}])
    assert nul.value.param == "messages"

    long = " ".join(f"w{i}" for i in range(2000))  # seconds at 300 tokens/s, under 16,000 characters
    raw = client.chat.completions.with_raw_response.create(
        model="streamfan", messages=[{"role": "user", "content": long}], stream=True
    )
    stream = raw.parse()
    next(iter(stream))
    stream.close()  # the client leaves mid-answer: OpenAI stops the answer, so does streamfan
    conversation, token = raw.headers["X-Streamfan-Conversation"], raw.headers["X-Streamfan-Token"]
    deadline = time.monotonic() + 10
    while "finish_reason" not in (answer := stored(node, conversation, token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer["finish_reason"] == "cancelled" and len(answer["content"]) < len(long)


def run_js_clients(node: Proc, chat_id: str, text: str) -> dict[str, Any]:
    """``tests/node/clients.mjs`` against ``node``: the openai JS package, the AI SDK's transport
    with an API key, and as a browser with its chat's own token."""
    import shutil
    import subprocess

    from tests.conftest import ROOT

    node_js = shutil.which("node")
    assert node_js is not None, "Node.js is missing: ./scripts/test.sh installs it"
    folder = ROOT / "tests" / "node"
    done = subprocess.run(
        [node_js, str(folder / "clients.mjs"), node.url, KEY, chat_id, text], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
