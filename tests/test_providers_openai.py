"""The OpenAI-compatible provider, through the real ``openai`` client and a local server.

Every goal here runs through `GoalManager` against `ProtocolServer` on 127.0.0.1: real HTTP,
the real client, no network.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from asgi_helpers import Users, app_for, client
from provider_servers import DEFAULT_PLAN, ProtocolServer, Reply, refused_port, until

from goalkit import GoalManager, InvalidGoal, Usage
from goalkit.errors import ProviderError
from goalkit.models import Goal
from goalkit.providers._common import parse_plan, retry_after
from goalkit.providers.openai import OpenAIProvider, OpenAIProviders, ollama_url, route

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def running_server() -> Iterator[ProtocolServer]:
    with ProtocolServer.running() as server:
        yield server


@pytest.fixture
def server(running_server: ProtocolServer, monkeypatch: pytest.MonkeyPatch) -> ProtocolServer:
    """The local server, emptied, with the OpenAI variables pointing at it."""
    running_server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{running_server.url}/v1")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return running_server


def manager(*plugins: object, **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    options.setdefault("entry_points", False)
    return GoalManager("memory://", plugins=plugins, **options)  # type: ignore[arg-type]


async def run(description: str, model: str, *plugins: object, **options: object) -> Goal:
    keys = ("mode", "max_steps", "max_retries", "max_tokens")
    create = {k: options.pop(k) for k in keys if k in options}
    async with manager(*plugins, **options) as m:
        goal = await m.create(description, model=model, **create)  # type: ignore[arg-type]
        return await m.wait(goal.id, timeout=10)


class TestEndToEnd:
    """A goal of each OpenAI-compatible family runs through the manager to completion."""

    async def test_gpt_goal_plans_and_runs_each_step(self, server: ProtocolServer) -> None:
        """gpt-4o-mini: one structured plan call, then one call per step with the results so far."""
        goal = await run("Write a short report on tides", "gpt-4o-mini", max_steps=4)
        assert goal.status == "completed", goal.error
        assert [s.title for s in goal.steps] == [p["title"] for p in DEFAULT_PLAN]
        assert [s.result for s in goal.steps] == ["result 1", "result 2"]
        assert goal.result == "result 2"

        plan, first, second = server.requests
        assert [r.path for r in server.requests] == ["/v1/chat/completions"] * 3
        assert all(r.json["model"] == "gpt-4o-mini" for r in server.requests)
        assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)
        schema = plan.json["response_format"]
        assert schema["type"] == "json_schema"
        steps = schema["json_schema"]["schema"]["properties"]["steps"]
        assert steps["maxItems"] == 4
        assert steps["items"]["required"] == ["title", "description"]
        assert "Write a short report on tides" in plan.text
        assert "response_format" not in first.json
        assert "Gather the facts" in first.text and "Completed steps" not in first.text
        # The second step is told what the first one produced.
        assert "Step 1: Gather the facts\nResult:\nresult 1" in second.text
        assert "Current step (2 of 2): Write the answer" in second.text

    async def test_client_retries_are_off(self, server: ProtocolServer) -> None:
        """The client sends each request once; retrying is the engine's job."""
        await run("x", "gpt-4o-mini", mode="direct")
        assert server.requests[0].headers["x-stainless-retry-count"] == "0"

    async def test_ollama_goal_uses_ollama_host_and_no_key(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ollama/llama3.2 goes to OLLAMA_HOST + /v1 as llama3.2; no OpenAI key needed or sent."""
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("OPENAI_BASE_URL")
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.port}")
        goal = await run("Name three rivers", "ollama/llama3.2")
        assert goal.status == "completed", goal.error
        assert {r.json["model"] for r in server.requests} == {"llama3.2"}
        assert {r.headers["authorization"] for r in server.requests} == {"Bearer ollama"}

    async def test_vllm_goal_uses_configured_base_url(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """vllm/<model> goes to the plugin's base_url, with the prefix stripped."""
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("OPENAI_BASE_URL")
        plugin = OpenAIProviders(base_url=f"{server.url}/v1")
        goal = await run("Sum it up", "vllm/Qwen/Qwen2.5-7B", plugin, mode="direct")
        assert goal.status == "completed", goal.error
        assert server.requests[0].json["model"] == "Qwen/Qwen2.5-7B"

    async def test_plugin_configuration_beats_the_environment(self, server: ProtocolServer) -> None:
        """OpenAIProviders(api_key=...) in plugins is asked before the built-in env default."""
        goal = await run(
            "x", "openai/gpt-4.1", OpenAIProviders(api_key="sk-from-code-000000"), mode="direct"
        )
        assert goal.status == "completed", goal.error
        assert server.requests[0].headers["authorization"] == "Bearer sk-from-code-000000"
        assert server.requests[0].json["model"] == "gpt-4.1"

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_runs_on_trio(self, server: ProtocolServer) -> None:
        """The provider works on trio as well as asyncio."""
        goal = await run("Write a short report", "gpt-4o-mini")
        assert goal.status == "completed", goal.error


class TestFaults:
    """HTTP faults map to the engine's retry decisions."""

    async def test_429_waits_for_retry_after_then_succeeds(self, server: ProtocolServer) -> None:
        """A 429 is retried no sooner than its Retry-After, even with zero backoff."""
        server.enqueue(Reply.error(429, "Rate limit reached", retry_after="1"))
        goal = await run("x", "gpt-4o-mini", mode="direct")
        assert goal.status == "completed", goal.error
        assert goal.steps[0].attempts == 2
        first, second = server.requests
        assert second.at - first.at >= 0.95

    async def test_500_is_retried(self, server: ProtocolServer) -> None:
        """A 5xx is retryable: the next attempt succeeds."""
        server.enqueue(Reply.error(500, "The server had an error"))
        goal = await run("x", "gpt-4o-mini", mode="direct")
        assert goal.status == "completed", goal.error
        assert goal.steps[0].attempts == 2

    async def test_401_fails_at_once_without_the_key(self, server: ProtocolServer) -> None:
        """A rejected key fails the step on its first attempt; the message never holds the key."""
        server.enqueue(Reply.error(401, f"Incorrect API key provided: {KEY}."))
        goal = await run("x", "gpt-4o-mini", mode="direct", max_retries=3)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 1
        assert len(server.requests) == 1
        assert goal.error is not None
        assert "OpenAI rejected the API key (401)" in goal.error.message
        assert KEY not in goal.error.message and KEY[:10] not in goal.error.message

    @pytest.mark.parametrize("status", [400, 403, 404, 422])
    async def test_invalid_request_fails_at_once(self, server: ProtocolServer, status: int) -> None:
        """400/403/404/422 fail on the first attempt with the server's message."""
        server.enqueue(Reply.error(status, "Unsupported parameter: 'foo'"))
        goal = await run("x", "gpt-4o-mini", mode="direct", max_retries=3)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 1
        assert goal.error is not None and f"({status})" in goal.error.message
        assert "Unsupported parameter: 'foo'" in goal.error.message

    async def test_unreachable_server_is_retried(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A refused connection is retryable, and the message says where it went."""
        with refused_port() as port:
            monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
            goal = await run("x", "gpt-4o-mini", mode="direct", max_retries=1)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 2
        assert goal.error is not None and "did not answer" in goal.error.message

    async def test_malformed_plan_is_retried_then_quoted(self, server: ProtocolServer) -> None:
        """A plan that is not JSON is retried; the final error quotes what the model said."""
        said = "Sure! Here is my plan: first, research the topic. " + "x" * 300
        server.enqueue(Reply(text=said), Reply(text=said))
        goal = await run("x", "gpt-4o-mini", max_retries=1)
        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "plan_failed"
        assert "after 2 attempt(s)" in goal.error.message
        assert "malformed plan" in goal.error.message
        assert repr(said[:200]) + "…" in goal.error.message
        assert len(server.requests) == 2

    async def test_wrong_plan_shape_is_retried(self, server: ProtocolServer) -> None:
        """JSON of the wrong shape is malformed too; the next attempt's good plan is used."""
        server.enqueue(Reply(text=json.dumps({"plan": ["a"]})), Reply(plan=["Only step"]))
        goal = await run("x", "gpt-4o-mini", max_retries=1)
        assert goal.status == "completed", goal.error
        assert [s.title for s in goal.steps] == ["Only step"]

    async def test_hung_request_ends_at_step_timeout(self, server: ProtocolServer) -> None:
        """A request that never answers is cut at step_timeout and its connection dropped."""
        server.enqueue(Reply(hang=True))
        started = time.monotonic()
        goal = await run("x", "gpt-4o-mini", mode="direct", max_retries=0, step_timeout=0.3)
        assert goal.status == "failed"
        assert goal.steps[0].error is not None
        assert goal.steps[0].error.code == "step_timeout"
        await until(lambda: server.requests[0].disconnected_at is not None)
        assert server.requests[0].disconnected_at - started < 2  # type: ignore[operator]

    async def test_cancel_aborts_the_request_in_flight(self, server: ProtocolServer) -> None:
        """Cancelling a goal drops the HTTP connection of its in-flight call within 1 s."""
        server.enqueue(Reply(hang=True))
        async with manager() as m:
            goal = await m.create("x", model="gpt-4o-mini", mode="direct")
            await until(lambda: len(server.requests) == 1)
            cancelled_at = time.monotonic()
            await m.cancel(goal.id)
            await until(lambda: server.requests[0].disconnected_at is not None, within=1)
            goal = await m.wait(goal.id, timeout=5)
        assert goal.status == "cancelled"
        assert server.requests[0].disconnected_at - cancelled_at < 1  # type: ignore[operator]


class TestConfiguration:
    """A model this provider serves but cannot reach is refused at creation, saying what to set."""

    async def test_missing_key_is_invalid_goal(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("OPENAI_API_KEY")
        async with manager() as m:
            with pytest.raises(InvalidGoal) as caught:
                await m.create("x", model="gpt-4o-mini")
        assert caught.value.field == "model"
        assert "'gpt-4o-mini' needs an OpenAI API key: set OPENAI_API_KEY" in str(caught.value)
        assert "OpenAIProviders(api_key=...)" in str(caught.value)

    async def test_missing_key_is_a_400_over_http(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Through the HTTP API the same refusal is a 400 naming `model` and what to set."""
        monkeypatch.delenv("OPENAI_API_KEY")
        async with manager(Users()) as m, client(app_for(m)) as http:
            answer = await http.post(
                "/api/v1/goals",
                json={"description": "x", "model": "gpt-4o-mini"},
                headers={"authorization": "Bearer alice-token"},
            )
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_request", "model")
        assert "set OPENAI_API_KEY" in error["message"]
        assert server.requests == []

    async def test_compatible_server_needs_a_url(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("OPENAI_BASE_URL")
        async with manager() as m:
            with pytest.raises(InvalidGoal, match="OPENAI_BASE_URL") as caught:
                await m.create("x", model="llamacpp/qwen")
        assert caught.value.field == "model"

    async def test_missing_package_is_invalid_goal(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "openai", None)
        async with manager() as m:
            with pytest.raises(InvalidGoal, match=r"pip install 'goalkit\[openai\]'") as caught:
                await m.create("x", model="ollama/llama3.2")
        assert caught.value.field == "model"

    async def test_resume_without_configuration_fails_the_goal(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A goal resumed where its provider is no longer configured fails: provider_unavailable."""
        url = f"sqlite:///{tmp_path / 'goals.db'}"
        server.enqueue(Reply(hang=True))
        async with GoalManager(url, entry_points=False) as first:
            goal = await first.create("x", model="gpt-4o-mini", mode="direct")
            await until(lambda: len(server.requests) == 1)
        monkeypatch.delenv("OPENAI_API_KEY")
        async with GoalManager(url, entry_points=False) as second:
            goal = await second.wait(goal.id, timeout=5)
        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "provider_unavailable"
        assert "OPENAI_API_KEY" in goal.error.message

    def test_other_models_are_not_served(self) -> None:
        plugin = OpenAIProviders(api_key="sk-x")
        for model in ("scripted", "claude-sonnet-4-20250514", "mistral-large", "openai/", "gpt4"):
            assert plugin.goalkit_model_provider(model=model) is None

    def test_provider_answers_for_served_names(self) -> None:
        plugin = OpenAIProviders(api_key="sk-x", base_url="http://h/v1")
        provider = plugin.goalkit_model_provider(model="o3-mini")
        assert isinstance(provider, OpenAIProvider) and provider.model == "o3-mini"
        assert "sk-x" not in repr(provider.endpoint)


class TestRouting:
    """Model names route as the table in docs/providers.md says."""

    @pytest.mark.parametrize(
        ("model", "expected"),
        [
            ("gpt-4o-mini", ("openai", "gpt-4o-mini")),
            ("chatgpt-4o-latest", ("openai", "chatgpt-4o-latest")),
            ("o1", ("openai", "o1")),
            ("o3-mini", ("openai", "o3-mini")),
            ("o4-mini", ("openai", "o4-mini")),
            ("openai/my-finetune", ("openai", "my-finetune")),
            ("ollama/llama3.2", ("ollama", "llama3.2")),
            ("ollama/qwen2.5:7b", ("ollama", "qwen2.5:7b")),
            ("vllm/meta-llama/Llama-3.1-8B", ("vllm", "meta-llama/Llama-3.1-8B")),
            ("llamacpp/any", ("llamacpp", "any")),
            ("o2", None),
            ("claude-3-5-haiku-latest", None),
            ("scripted", None),
        ],
    )
    def test_route(self, model: str, expected: tuple[str, str] | None) -> None:
        assert route(model) == expected

    @pytest.mark.parametrize(
        ("host", "url"),
        [
            ("127.0.0.1", "http://127.0.0.1:11434/v1"),
            ("0.0.0.0:8080", "http://127.0.0.1:8080/v1"),
            ("localhost:11434/", "http://localhost:11434/v1"),
            ("http://gpu-box:11434", "http://gpu-box:11434/v1"),
            ("https://ollama.example.com", "https://ollama.example.com/v1"),
            ("http://h:1/v1", "http://h:1/v1"),
        ],
    )
    def test_ollama_host(self, host: str, url: str) -> None:
        assert ollama_url(host) == url

    def test_retry_after_forms(self) -> None:
        assert retry_after({"retry-after": "2"}) == 2.0
        assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
        assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, clock=1445412485) == 5
        assert retry_after({"retry-after": "soon"}) is None
        assert retry_after({}) is None
        assert retry_after({"retry-after": "86400"}) == 300.0

    def test_plan_parsing(self) -> None:
        fenced = '```json\n{"steps": [{"title": " A  b ", "description": "d"}]}\n```'
        assert [(s.title, s.description) for s in parse_plan(fenced, 3)] == [("A b", "d")]
        assert [s.title for s in parse_plan('["x", "y"]', 3)] == ["x", "y"]
        with pytest.raises(ProviderError, match="more than max_steps=1") as caught:
            parse_plan('{"steps": ["x", "y"]}', 1)
        assert caught.value.retryable
        with pytest.raises(ProviderError, match="step 1 has no title"):
            parse_plan('{"steps": [{"description": "d"}]}', 3)


class TestProtocolServer:
    """The local server speaks the streaming protocol too, for the real client (part 2 uses it)."""

    async def test_chat_completions_stream(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(text="a streamed answer of some length"))
        async with openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{server.url}/v1", max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                usage = chunk.usage or usage
        assert "".join(pieces) == "a streamed answer of some length"
        assert len(pieces) > 2
        assert usage is not None and usage.total_tokens == 18


class TestUsageAndBudgets:
    """Usage comes from the server's answers; a budget caps each call and stops the goal."""

    async def test_usage_of_every_call_is_recorded(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(plan=["a", "b"], usage=(20, 5)), Reply(usage=(30, 9)))
        goal = await run("x", "gpt-4o-mini")
        assert goal.status == "completed", goal.error
        assert [s.usage for s in goal.steps] == [Usage(30, 9), Usage(11, 7)]
        assert goal.usage == Usage(61, 21)
        assert all("max_completion_tokens" not in r.json for r in server.requests)

    async def test_malformed_plan_tokens_count(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(text="no plan here", usage=(8, 4)))
        goal = await run("x", "gpt-4o-mini", max_retries=1, mode="plan")
        assert goal.status == "completed", goal.error
        assert goal.usage == Usage(8 + 11 * 3, 4 + 7 * 3)

    async def test_budget_caps_each_call_and_stops_the_goal(self, server: ProtocolServer) -> None:
        """Each call may write at most what is left; no call once the budget is used up."""
        async with manager() as m:
            goal = await m.create("x", model="gpt-4o-mini", max_tokens=36)
            goal = await m.wait(goal.id, timeout=10)
        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        assert [r.json["max_completion_tokens"] for r in server.requests] == [36, 18]
        assert len(server.requests) == 2  # plan + step 1; step 2 was never sent
        assert goal.usage.total_tokens == 36
        assert [s.status for s in goal.steps] == ["completed", "pending"]

    async def test_compatible_servers_get_max_tokens(self, server: ProtocolServer) -> None:
        goal = await run("x", "vllm/qwen", mode="direct", max_tokens=1000)
        assert goal.status == "completed", goal.error
        (request,) = server.requests
        assert request.json["max_tokens"] == 1000
        assert "max_completion_tokens" not in request.json


class TestStreaming:
    """With live_output the step is streamed and each chunk reaches live followers."""

    async def test_stream_deltas_reach_followers(self, server: ProtocolServer) -> None:
        text = "A streamed answer that arrives in several pieces."
        server.enqueue(Reply(text=text, usage=(13, 10)))
        async with manager(live_output=True) as m:
            goal = await m.create("x", model="gpt-4o-mini", mode="direct")
            live = [e async for e in m.events(goal.id)]
            goal = await m.get(goal.id)
        assert goal.status == "completed", goal.error
        assert goal.result == text
        deltas = [e.data["text"] for e in live if e.type == "goal.step_delta"]
        assert len(deltas) > 2 and "".join(deltas) == text
        (request,) = server.requests
        assert request.json["stream"] is True
        assert request.json["stream_options"] == {"include_usage": True}
        assert goal.usage == Usage(13, 10)

    async def test_cancel_mid_stream_drops_the_connection(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(text="x" * 200, stall_after=3))
        async with manager(live_output=True) as m:
            goal = await m.create("x", model="gpt-4o-mini", mode="direct")
            async for event in m.events(goal.id):
                if event.type == "goal.step_delta":
                    cancelled_at = time.monotonic()
                    await m.cancel(goal.id)
                    break
            await until(lambda: server.requests[0].disconnected_at is not None, within=2)
            goal = await m.wait(goal.id, timeout=5)
        assert goal.status == "cancelled"
        assert goal.steps[0].status == "cancelled" and goal.steps[0].result is None
        assert server.requests[0].disconnected_at - cancelled_at < 2  # type: ignore[operator]
