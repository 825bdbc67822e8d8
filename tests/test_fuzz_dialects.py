"""10,000 generated requests to the OpenAI and AI SDK doors of a real node, keys on (issue 22).

Hypothesis builds Chat Completions, Responses and AI SDK requests (derandomized: the same run every
time, bounded) from valid ones to hostile ones: roles, content as strings, part lists of any type
and text of any kind (lone surrogates, NUL, too long), parameters streamfan does not implement,
``stream`` and ``background`` either way, real and forged response and chat ids, the API key, a
conversation's token or neither, and raw bytes. Every answer must be below 500; every error a JSON
document in the door's own shape; every accepted stream must end with its terminal event or an
error event, never a bare close.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import API_KEY, Proc
from tests.test_fuzz import node_process, send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # slow: 10,000 requests, a few thousand answers

EXAMPLES = 10_000


@dataclass
class Node:
    port: int
    conversation: tuple[str, str]
    response_id: str
    proc: Proc
    seen: dict[int, int]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The README's command (a private redis-server as its broker) with API keys and a fast echo model."""
    env = {
        "STREAMFAN_API_KEYS": API_KEY,
        "STREAMFAN_EMBEDDED_BROKER": "redis-server",
        "STREAMFAN_MAX_BODY_BYTES": "65536",
        "STREAMFAN_MAX_MESSAGE_CHARS": "2000",
        "STREAMFAN_LIMITS_EXEMPT": "127.0.0.0/8",
        "STREAMFAN_GENERATOR": "echo",
        "STREAMFAN_SIM_TTFT_MS": "0",
        "STREAMFAN_SIM_TOKENS_PER_SECOND": "20000",
        "STREAMFAN_SIM_JITTER": "0",
    }
    with node_process(env, tmp_path_factory.mktemp("fuzz-dialects") / "node.log") as proc:
        _, _, created = send(proc.port, "POST", "/api/conversations", {}, None)
        conversation = json.loads(created)
        body = json.dumps({"model": "m", "input": "a real response"}).encode()
        status, _, made = send(proc.port, "POST", "/v1/responses", {"Authorization": f"Bearer {API_KEY}"}, body)
        assert status == 200, made
        yield Node(proc.port, (conversation["id"], conversation["token"]), json.loads(made)["id"], proc, {})


hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["a\ud800b", "\udfff", "nul\x00", "", "   ", "x" * 2001, "naïve 🚀", "\r\n"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
parts = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["text", "input_text", "output_text", "image_url", "input_image", "file", 7]),
            "text": st.one_of(hostile_text, json_values),
        }
    ),
    max_size=3,
)
contents = st.one_of(st.text(min_size=1, max_size=30), hostile_text, parts, json_values)
roles = st.sampled_from(["user", "user", "user", "user", "assistant", "system", "developer", "tool", "", 3])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=3)
numbers = st.one_of(st.integers(-3, 10**6), st.sampled_from([1, 2, 16, True, None, "8", 1.5]))
extras = st.dictionaries(
    st.sampled_from(
        ["n", "tools", "tool_choice", "response_format", "logprobs", "stream_options", "text", "reasoning"]
    ),
    st.one_of(json_values, st.just([]), st.just(1), st.just({"include_usage": True})),
    max_size=2,
)


@st.composite
def requests(draw: st.DrawFn, node: Node) -> tuple[str, str, dict[str, str], bytes | None]:
    door = draw(st.sampled_from(["chat", "responses", "responses_id", "models", "ai_sdk", "ai_sdk_id"]))
    chat_id = draw(st.one_of(st.just(node.conversation[0]), st.text(max_size=20), st.just("chat-fuzz")))
    response_id = draw(st.one_of(st.just(node.response_id), st.just("resp_" + "x" * 22), st.text(max_size=30)))
    stream = draw(st.one_of(st.booleans(), json_values))
    body: Any
    if door == "chat":
        path, method = "/v1/chat/completions", "POST"
        body = {"model": "m", "messages": draw(messages), "stream": stream, "max_tokens": draw(numbers), **draw(extras)}
    elif door == "responses":
        path, method = "/v1/responses", "POST"
        body = {
            "model": "m",
            "input": draw(st.one_of(hostile_text, messages, json_values)),
            "stream": stream,
            "background": draw(st.booleans()),
            "max_output_tokens": draw(numbers),
            **draw(extras),
        }
        if draw(st.booleans()):
            body["previous_response_id"] = draw(st.one_of(st.just(node.response_id), st.just(response_id), json_values))
        if draw(st.booleans()):
            body["instructions"] = draw(st.one_of(hostile_text, json_values))
    elif door == "responses_id":
        suffix = draw(
            st.sampled_from(
                ["", "?stream=true", "?stream=true&starting_after=3", "/cancel", "?stream=true&starting_after=x"]
            )
        )
        path = f"/v1/responses/{response_id}{suffix}"
        method, body = ("POST", {}) if suffix == "/cancel" else ("GET", None)
    elif door == "models":
        path, method, body = "/v1/models", "GET", None
    elif door == "ai_sdk":
        path, method = "/api/chat", "POST"
        ui = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"id": st.text(max_size=4), "role": roles, "parts": st.one_of(parts, json_values)}
                ),
                max_size=3,
            )
        )
        body = {"id": chat_id, "messages": ui, "trigger": "submit-message"}
    else:
        path = f"/api/chat/{chat_id or 'x'}" + draw(st.sampled_from(["/stream", "/stop"]))
        method, body = ("GET", None) if path.endswith("/stream") else ("POST", {})
    method = draw(st.sampled_from([method, method, method, "GET", "POST", "DELETE", "PUT"]))
    credential = draw(st.sampled_from(["key", "key", "key", "token", "wrong", "none"]))
    headers = {"Content-Type": "application/json"}
    if credential == "key":
        headers["Authorization"] = f"Bearer {API_KEY}"
    elif credential == "token":
        headers["Authorization"] = f"Bearer {node.conversation[1]}"
    elif credential == "wrong":
        headers["Authorization"] = "Bearer sk-wrong"
    raw: bytes | None = None
    if method in ("POST", "PUT", "DELETE") and body is not None:
        shape = draw(st.sampled_from(["json", "json", "json", "bytes", "array"]))
        if shape == "json":
            raw = json.dumps(body).encode()  # lone surrogates go out as \ud800 escapes, as JSON allows
        elif shape == "bytes":
            raw = draw(st.binary(max_size=100))
        else:
            raw = json.dumps([body]).encode()
    return method, path, headers, raw


def check(status: int, content_type: str, data: bytes, method: str, path: str) -> None:
    assert status < 500, (status, method, path, data[:300])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, path, content_type, data[:200])
        error = json.loads(data)["error"]
        if path.startswith("/v1/"):
            assert set(error) == {"message", "type", "param", "code"}, (path, error)
        else:
            assert isinstance(error, str), (path, error)
    elif content_type.startswith("text/event-stream"):
        frames = [f for f in data.decode().split("\n\n") if f.strip() and not f.startswith(":")]
        assert frames, (path, "an accepted stream that sent nothing")
        last = frames[-1]
        if path.startswith("/v1/responses"):
            ends = ("response.completed", "response.incomplete", "response.failed", "event: error")
            assert any(kind in last for kind in ends), (path, last[:300])
        else:  # Chat Completions and the AI SDK stream end with [DONE], after an error if one
            assert last.endswith("data: [DONE]") or '"error"' in last, (path, last[:300])


def test_ten_thousand_generated_dialect_requests_get_no_5xx_and_end_every_stream(node: Node) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(requests(node))
    def one(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
        method, path, headers, body = request
        status, content_type, data = send(node.port, method, path, headers, body, whole_streams=True)
        node.seen[status] = node.seen.get(status, 0) + 1
        check(status, content_type, data, method, path)

    one()
    assert sum(node.seen.values()) >= EXAMPLES
    assert {200, 400, 401, 404} <= set(node.seen), node.seen
    print(f"statuses: {dict(sorted(node.seen.items()))}")
    log = node.proc.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
