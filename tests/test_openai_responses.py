"""The Responses dialect with the official Python SDK: streamed, whole, background, resumed elsewhere, cancelled."""

import json
import time

import openai
import pytest
import redis

from launch.processes import RedisServer
from tests.conftest import API_KEY, Proc
from wire.keys import ConversationKeys

pytestmark = pytest.mark.timeout(90)

KEY = API_KEY
PROMPT = "answered through the Responses API — naïve café 🚀"
LONG = " ".join(f"piece{i}" for i in range(150))


@pytest.fixture
def nodes(keyed_nodes: list[Proc]) -> list[Proc]:
    return keyed_nodes


def client(node: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.url}/v1", api_key=KEY)


def test_streamed_and_whole_responses_carry_the_answer(nodes: list[Proc]) -> None:
    api = client(nodes[0])
    events = list(api.responses.create(model="streamfan", input=PROMPT, stream=True))
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == PROMPT == events[-1].response.output_text
    whole = api.responses.create(model="streamfan", input=[{"role": "user", "content": PROMPT}], instructions="be kind")
    assert whole.status == "completed" and whole.output_text == PROMPT
    assert api.responses.retrieve(whole.id).output_text == PROMPT


def test_a_background_response_resumes_on_another_node_from_its_sequence_number(nodes: list[Proc]) -> None:
    first, second = client(nodes[0]), client(nodes[1])
    started = first.responses.create(model="streamfan", input=LONG, background=True)
    assert started.status == "in_progress"
    head = []
    stream = first.responses.retrieve(started.id, stream=True)
    for event in stream:
        head.append(event)
        if len(head) == 20:
            break
    stream.close()  # the connection is cut mid-answer
    last = head[-1].sequence_number
    rest = list(second.responses.retrieve(started.id, stream=True, starting_after=last))
    assert rest[0].sequence_number == last + 1 and rest[-1].type == "response.completed"
    text = "".join(e.delta for e in head + rest if e.type == "response.output_text.delta")
    assert text == LONG == second.responses.retrieve(started.id).output_text


def test_cancel_is_idempotent(nodes: list[Proc]) -> None:
    api = client(nodes[0])
    started = api.responses.create(model="streamfan", input=LONG, background=True)
    cancelled = api.responses.cancel(started.id)
    assert cancelled.status == "cancelled" and api.responses.cancel(started.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve("resp_doesnotexist000000")


def test_previous_response_id_continues_and_unsupported_parameters_are_refused(
    nodes: list[Proc], redis_process: RedisServer
) -> None:
    api = client(nodes[0])
    first = api.responses.create(model="streamfan", input="my name is Ada")
    second = api.responses.create(model="streamfan", input="what is my name?", previous_response_id=first.id)
    assert second.status == "completed" and second.output_text == "what is my name?"  # the echo model
    stored = redis.Redis(port=redis_process.port, decode_responses=True).lrange(
        ConversationKeys(second.id.removeprefix("resp_")).messages, 0, -1
    )
    turns = [(m["role"], m["content"]) for m in map(json.loads, stored)]
    assert turns == [
        ("user", "my name is Ada"),
        ("assistant", "my name is Ada"),
        ("user", "what is my name?"),
        ("assistant", "what is my name?"),
    ]
    with pytest.raises(openai.NotFoundError) as unknown:
        api.responses.create(model="streamfan", input="x", previous_response_id="resp_" + "x" * 22)
    assert unknown.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as refused:
        api.responses.create(model="streamfan", input="x", tools=[{"type": "web_search"}])
    assert refused.value.param == "tools" and refused.value.code == "unsupported_parameter"


def test_a_stream_that_created_its_response_cancels_it_when_closed_unless_background(nodes: list[Proc]) -> None:
    api = client(nodes[0])
    stream = api.responses.create(model="streamfan", input=LONG, stream=True)
    created = next(iter(stream))
    assert created.type == "response.created"
    stream.close()  # the client leaves mid-answer
    deadline = time.monotonic() + 10
    while (
        status := api.responses.retrieve(created.response.id).status
    ) == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == "cancelled"
    started = api.responses.create(model="streamfan", input=" ".join(LONG.split()[:20]), background=True)
    watching = api.responses.retrieve(started.id, stream=True)
    next(iter(watching))
    watching.close()  # a background response runs on without its watchers
    deadline = time.monotonic() + 10
    while (status := api.responses.retrieve(started.id).status) == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == "completed"
