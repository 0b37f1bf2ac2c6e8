"""The Anthropic provider, through the real ``anthropic`` client and a local server.

Every goal here runs through `GoalManager` against `ProtocolServer` on 127.0.0.1: real HTTP,
the real client, no network.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import anthropic
import pytest
from provider_servers import DEFAULT_PLAN, ProtocolServer, Reply, Seen, until

from goalkit import GoalManager, InvalidGoal, Usage
from goalkit.models import Goal
from goalkit.providers.anthropic import AnthropicProvider, AnthropicProviders, route

pytestmark = pytest.mark.anyio

KEY = "sk-ant-test-0123456789abcdef"
MODEL = "claude-sonnet-4-20250514"


@pytest.fixture(scope="module")
def running_server() -> Iterator[ProtocolServer]:
    with ProtocolServer.running() as server:
        yield server


@pytest.fixture
def server(running_server: ProtocolServer, monkeypatch: pytest.MonkeyPatch) -> ProtocolServer:
    """The local server, emptied, with the Anthropic variables pointing at it."""
    running_server.reset()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", running_server.url)
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


def sent_key(seen: Seen) -> str | None:
    """The key a request carried (``x-api-key``, or a bearer token in newer clients)."""
    bearer = seen.headers.get("authorization", "").removeprefix("Bearer ")
    return seen.headers.get("x-api-key") or bearer or None


class TestEndToEnd:
    """A Claude goal runs through the manager to completion."""

    async def test_claude_goal_plans_with_a_tool_and_runs_each_step(
        self, server: ProtocolServer
    ) -> None:
        """The plan comes from a forced submit_plan tool call; steps get the results so far."""
        goal = await run("Write a short report on tides", MODEL, max_steps=5)
        assert goal.status == "completed", goal.error
        assert [s.title for s in goal.steps] == [p["title"] for p in DEFAULT_PLAN]
        assert goal.result == "result 2"

        plan, first, second = server.requests
        assert server.paths() == ["/v1/messages"] * 3
        assert all(r.json["model"] == MODEL for r in server.requests)
        assert all(sent_key(r) == KEY for r in server.requests)
        assert all(r.json["max_tokens"] == 4096 for r in server.requests)
        assert plan.json["tool_choice"] == {"type": "tool", "name": "submit_plan"}
        (tool,) = plan.json["tools"]
        assert tool["name"] == "submit_plan"
        assert tool["input_schema"]["properties"]["steps"]["maxItems"] == 5
        assert "tools" not in first.json
        assert "Step 1: Gather the facts\nResult:\nresult 1" in second.text
        assert "Current step (2 of 2): Write the answer" in second.text

    async def test_prefixed_name_and_plugin_configuration(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """anthropic/<model> strips the prefix; AnthropicProviders(...) configures it in code."""
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        monkeypatch.delenv("ANTHROPIC_BASE_URL")
        plugin = AnthropicProviders(
            api_key="sk-ant-from-code-0000", base_url=server.url, max_output_tokens=512
        )
        goal = await run("x", "anthropic/claude-3-5-haiku-latest", plugin, mode="direct")
        assert goal.status == "completed", goal.error
        (seen,) = server.requests
        assert seen.json["model"] == "claude-3-5-haiku-latest"
        assert seen.json["max_tokens"] == 512
        assert sent_key(seen) == "sk-ant-from-code-0000"

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_runs_on_trio(self, server: ProtocolServer) -> None:
        goal = await run("Write a short report", MODEL)
        assert goal.status == "completed", goal.error


class TestFaults:
    """HTTP faults map to the engine's retry decisions."""

    async def test_429_waits_for_retry_after_then_succeeds(self, server: ProtocolServer) -> None:
        server.enqueue(
            Reply.error(429, "Number of requests has exceeded your rate limit", retry_after="1")
        )
        goal = await run("x", MODEL, mode="direct")
        assert goal.status == "completed", goal.error
        assert goal.steps[0].attempts == 2
        first, second = server.requests
        assert second.at - first.at >= 0.95

    @pytest.mark.parametrize("status", [500, 529])
    async def test_server_errors_and_overload_are_retried(
        self, server: ProtocolServer, status: int
    ) -> None:
        server.enqueue(Reply.error(status, "Overloaded"))
        goal = await run("x", MODEL, mode="direct")
        assert goal.status == "completed", goal.error
        assert goal.steps[0].attempts == 2

    async def test_401_fails_at_once_without_the_key(self, server: ProtocolServer) -> None:
        server.enqueue(Reply.error(401, f"invalid x-api-key {KEY}"))
        goal = await run("x", MODEL, mode="direct", max_retries=3)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 1
        assert goal.error is not None
        assert "Anthropic rejected the API key (401)" in goal.error.message
        assert KEY not in goal.error.message

    async def test_400_fails_at_once(self, server: ProtocolServer) -> None:
        server.enqueue(Reply.error(400, "max_tokens: Field required"))
        goal = await run("x", MODEL, mode="direct", max_retries=3)
        assert goal.status == "failed"
        assert goal.steps[0].attempts == 1
        assert goal.error is not None and "max_tokens: Field required" in goal.error.message

    async def test_plan_without_the_tool_call_is_retried_then_quoted(
        self, server: ProtocolServer
    ) -> None:
        """An answer in prose instead of the tool call is malformed; the error quotes it."""
        server.enqueue(
            Reply(text="I think we should start by"), Reply(text="I think we should start by")
        )
        goal = await run("x", MODEL, max_retries=1)
        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "plan_failed"
        assert "after 2 attempt(s)" in goal.error.message
        assert "did not call submit_plan" in goal.error.message
        assert "'I think we should start by'" in goal.error.message

    async def test_tool_input_of_the_wrong_shape_is_retried(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(plan=[{"name": "no title"}]), Reply(plan=["Only step"]))
        goal = await run("x", MODEL, max_retries=1)
        assert goal.status == "completed", goal.error
        assert [s.title for s in goal.steps] == ["Only step"]

    async def test_hung_request_ends_at_step_timeout(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(hang=True))
        goal = await run("x", MODEL, max_retries=0, step_timeout=0.3)
        assert goal.status == "failed"
        assert goal.error is not None and goal.error.code == "plan_timeout"
        await until(lambda: server.requests[0].disconnected_at is not None)

    async def test_cancel_aborts_the_request_in_flight(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(hang=True))
        async with manager() as m:
            goal = await m.create("x", model=MODEL, mode="direct")
            await until(lambda: len(server.requests) == 1)
            cancelled_at = time.monotonic()
            await m.cancel(goal.id)
            await until(lambda: server.requests[0].disconnected_at is not None, within=1)
            goal = await m.wait(goal.id, timeout=5)
        assert goal.status == "cancelled"
        assert server.requests[0].disconnected_at - cancelled_at < 1  # type: ignore[operator]


class TestConfiguration:
    """A Claude model without a key is refused at creation, saying what to set."""

    async def test_missing_key_is_invalid_goal(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        async with manager() as m:
            with pytest.raises(InvalidGoal) as caught:
                await m.create("x", model=MODEL)
        assert caught.value.field == "model"
        assert f"{MODEL!r} needs an Anthropic API key: set ANTHROPIC_API_KEY" in str(caught.value)

    async def test_missing_package_is_invalid_goal(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "anthropic", None)
        async with manager() as m:
            with pytest.raises(InvalidGoal, match=r"pip install 'goalkit\[anthropic\]'"):
                await m.create("x", model=MODEL)

    def test_routing(self) -> None:
        assert route("claude-sonnet-4-20250514") == "claude-sonnet-4-20250514"
        assert route("anthropic/claude-opus-4-1") == "claude-opus-4-1"
        for model in ("anthropic/", "claude", "gpt-4o", "scripted"):
            assert route(model) is None
        provider = AnthropicProviders(api_key="k").goalkit_model_provider(model=MODEL)
        assert isinstance(provider, AnthropicProvider)
        assert AnthropicProviders(api_key="k").goalkit_model_provider(model="gpt-4o") is None


class TestProtocolServer:
    """The local server speaks the Messages streaming events, for the real client."""

    async def test_messages_stream(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(text="a streamed answer of some length"))
        async with (
            anthropic.AsyncAnthropic(api_key=KEY, base_url=server.url, max_retries=0) as client,
            client.messages.stream(
                model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(pieces) == "a streamed answer of some length"
        assert len(pieces) > 2
        assert final.usage.output_tokens == 7 and final.stop_reason == "end_turn"

    async def test_tool_use_stream(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(plan=["One", "Two"]))
        async with (
            anthropic.AsyncAnthropic(api_key=KEY, base_url=server.url, max_retries=0) as client,
            client.messages.stream(
                model=MODEL,
                max_tokens=100,
                messages=[{"role": "user", "content": "plan"}],
                tools=[{"name": "submit_plan", "input_schema": {"type": "object"}}],
                tool_choice={"type": "tool", "name": "submit_plan"},
            ) as stream,
        ):
            final = await stream.get_final_message()
        (block,) = final.content
        assert block.type == "tool_use"
        assert [s["title"] for s in block.input["steps"]] == ["One", "Two"]  # type: ignore[index]


class TestUsageAndBudgets:
    """Usage comes from the Messages API's answers; a budget caps max_tokens and stops the goal."""

    async def test_usage_of_every_call_is_recorded(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(plan=["a"], usage=(40, 12)), Reply(usage=(25, 6)))
        goal = await run("x", MODEL)
        assert goal.status == "completed", goal.error
        assert goal.steps[0].usage == Usage(25, 6)
        assert goal.usage == Usage(65, 18)

    async def test_budget_caps_max_tokens_and_stops_the_goal(self, server: ProtocolServer) -> None:
        """The answer may not be longer than what is left; no call once it is used up."""
        async with manager() as m:
            goal = await m.create("x", model=MODEL, max_tokens=36)
            goal = await m.wait(goal.id, timeout=10)
        assert goal.error is not None and goal.error.code == "budget_exceeded"
        assert [r.json["max_tokens"] for r in server.requests] == [36, 18]
        assert goal.usage.total_tokens == 36

    async def test_a_large_budget_keeps_the_default_cap(self, server: ProtocolServer) -> None:
        goal = await run("x", MODEL, mode="direct", max_tokens=10**6)
        assert goal.status == "completed", goal.error
        assert server.requests[0].json["max_tokens"] == 4096


class TestStreaming:
    """With live_output the step is streamed and each text delta reaches live followers."""

    async def test_stream_deltas_reach_followers(self, server: ProtocolServer) -> None:
        text = "Claude streams this answer in several text deltas."
        server.enqueue(Reply(text=text, usage=(21, 14)))
        async with manager(live_output=True) as m:
            goal = await m.create("x", model=MODEL, mode="direct")
            live = [e async for e in m.events(goal.id)]
            goal = await m.get(goal.id)
        assert goal.status == "completed", goal.error
        assert goal.result == text
        deltas = [e.data["text"] for e in live if e.type == "goal.step_delta"]
        assert len(deltas) > 2 and "".join(deltas) == text
        assert server.requests[0].json["stream"] is True
        # Input tokens from message_start, output tokens from the last message_delta.
        assert goal.usage == Usage(21, 14)

    async def test_cancel_mid_stream_drops_the_connection(self, server: ProtocolServer) -> None:
        server.enqueue(Reply(text="y" * 200, stall_after=4))
        async with manager(live_output=True) as m:
            goal = await m.create("x", model=MODEL, mode="direct")
            async for event in m.events(goal.id):
                if event.type == "goal.step_delta":
                    cancelled_at = time.monotonic()
                    await m.cancel(goal.id)
                    break
            await until(lambda: server.requests[0].disconnected_at is not None, within=2)
            goal = await m.wait(goal.id, timeout=5)
        assert goal.status == "cancelled"
        assert server.requests[0].disconnected_at - cancelled_at < 2  # type: ignore[operator]

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_streams_on_trio(self, server: ProtocolServer) -> None:
        async with manager(live_output=True) as m:
            goal = await m.create("x", model=MODEL, mode="direct")
            live = [e async for e in m.events(goal.id)]
        assert "".join(e.data["text"] for e in live if e.type == "goal.step_delta") == "result 1"
