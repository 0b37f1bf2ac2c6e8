"""The Anthropic provider: the Messages API for ``claude-*`` and ``anthropic/<model>``.

Built on the official ``anthropic`` client (``pip install 'goalkit[anthropic]'``), imported
only when a Claude model is first used. The key comes from an `AnthropicProviders` plugin
given to the manager, else from ``ANTHROPIC_API_KEY``; the URL likewise from
``ANTHROPIC_BASE_URL`` (optional). Never from a request. Without a key (or without the client
package) `GoalManager.create` fails with an `InvalidGoal` naming ``model`` and what to set.

Planning forces a ``submit_plan`` tool call whose input schema is the plan, so the steps
arrive as checked JSON rather than prose. As in the OpenAI-compatible provider, the client's
own retries are off (``max_retries=0``): the engine's retry policy and ``step_timeout`` are in
charge, and each call uses a client of its own, closed right after it.

Usage: each call's ``input_tokens`` and ``output_tokens`` are reported through
`goalkit.Answer` (also for a malformed answer, on its `ProviderError`); ``max_tokens`` is the
smaller of ``max_output_tokens`` and what is left of the goal's budget. `stream_step` streams
(``stream=True``: input tokens from ``message_start``, output tokens from the last
``message_delta``) for the manager's ``live_output``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from goalkit.errors import InvalidGoal, ProviderError
from goalkit.hookspecs import hookimpl
from goalkit.models import NO_USAGE, Answer, Goal, Step, Usage
from goalkit.providers import Emit
from goalkit.providers._common import (
    PLAN_SYSTEM,
    STEP_SYSTEM,
    client_options,
    connection_fault,
    http_fault,
    installed,
    parse_plan,
    plan_prompt,
    plan_schema,
    quote,
    step_prompt,
)

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from anthropic.types import Message

__all__ = ["AnthropicProvider", "AnthropicProviders", "goalkit_model_provider", "route"]

SERVICE = "Anthropic"
PLAN_TOOL = "submit_plan"
MAX_OUTPUT_TOKENS = 4096
"""The Messages API needs a cap on each answer's length; this is goalkit's default."""


def route(model: str) -> str | None:
    """The model name to send for `model`, or None when it is not a Claude model."""
    if model.startswith("anthropic/"):
        return model[len("anthropic/") :] or None
    return model if model.startswith("claude-") else None


@attrs.frozen
class Endpoint:
    """Where and how to reach the Messages API."""

    base_url: str | None
    api_key: str = attrs.field(repr=False)
    timeout: float | None = None
    max_output_tokens: int = MAX_OUTPUT_TOKENS


class AnthropicProvider:
    """A `ModelProvider` for one Claude model through the Messages API.

    `plan` forces a ``submit_plan`` tool call and checks its input; `run_step` sends the
    goal, the completed steps with their results, and the step, and returns the answer text.
    Client errors become `ProviderError`: 429, 5xx and 529 (overloaded) retryable, honouring
    ``Retry-After``; 401/403/400/404/422 final.
    """

    def __init__(self, model: str, endpoint: Endpoint) -> None:
        self.model = model
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"AnthropicProvider({self.model!r})"

    def _client(self) -> AsyncAnthropic:
        import anthropic

        endpoint = self.endpoint
        return anthropic.AsyncAnthropic(
            **client_options(endpoint.api_key, endpoint.base_url, endpoint.timeout)
        )

    async def _message(
        self, goal: Goal, system: str, prompt: str, emit: Emit | None = None, **options: Any
    ) -> tuple[Reply, Usage]:
        """One Messages API call: what came back and the usage the API reported.

        With `emit` the answer is streamed (``stream=True``) and each text delta is passed
        to it as it arrives. The answer's length is capped at what is left of the goal's
        budget when that is less than ``max_output_tokens``.
        """
        import anthropic

        cap = self.endpoint.max_output_tokens
        left = goal.tokens_left
        if left is not None:
            cap = max(min(cap, left), 1)
        # Built in a worker thread: importing the client and creating its SSL context take
        # long enough to stall the event loop.
        client = await anyio.to_thread.run_sync(self._client)
        usage = NO_USAGE
        try:
            if emit is None:
                message: Message = await client.messages.create(
                    model=self.model,
                    max_tokens=cap,
                    system=system,
                    messages=[{"role": "user", "content": prompt}],
                    **options,
                )
                usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
                reply = Reply(list(message.content), message.stop_reason)
            else:
                reply, usage = await self._stream(client, cap, system, prompt, emit)
        except anthropic.APIStatusError as exc:
            raise http_fault(
                SERVICE,
                self.model,
                exc.status_code,
                exc.response.headers,
                exc.body,
                exc.message,
                (self.endpoint.api_key,),
            ) from None
        except anthropic.APIConnectionError as exc:
            raise connection_fault(SERVICE, str(client.base_url), exc) from None
        except anthropic.APIError as exc:  # an error event in the middle of a stream
            raise ProviderError(
                f"{SERVICE} failed for model {self.model!r}: {exc.message}", usage=usage
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
        return reply, usage

    async def _stream(
        self, client: AsyncAnthropic, cap: int, system: str, prompt: str, emit: Emit
    ) -> tuple[Reply, Usage]:
        stream = await client.messages.create(
            model=self.model,
            max_tokens=cap,
            system=system,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        )
        pieces: list[str] = []
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        async with stream:
            async for event in stream:
                if event.type == "message_start":
                    input_tokens = event.message.usage.input_tokens
                    output_tokens = event.message.usage.output_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    pieces.append(event.delta.text)
                    emit(event.delta.text)
                elif event.type == "message_delta":
                    # Cumulative counts: the last one is the call's.
                    output_tokens = event.usage.output_tokens
                    stop_reason = event.delta.stop_reason
        return Reply([TextBlock("".join(pieces))], stop_reason), Usage(input_tokens, output_tokens)

    async def plan(self, goal: Goal, max_steps: int) -> Answer:
        """Ask for 1 to `max_steps` steps through a forced ``submit_plan`` tool call."""
        reply, usage = await self._message(
            goal,
            PLAN_SYSTEM,
            plan_prompt(goal, max_steps),
            tools=[
                {
                    "name": PLAN_TOOL,
                    "description": "Submit the plan: the steps that achieve the goal, in order.",
                    "input_schema": plan_schema(max_steps),
                }
            ],
            tool_choice={"type": "tool", "name": PLAN_TOOL},
        )
        try:
            for block in reply.content:
                if block.type == "tool_use" and block.name == PLAN_TOOL:
                    plan = parse_plan(block.input, max_steps, said=json.dumps(block.input))
                    return Answer(plan, usage)
        except ProviderError as exc:
            exc.usage = usage  # a malformed plan's tokens were spent all the same
            raise
        raise ProviderError(
            f"malformed plan: {SERVICE} did not call {PLAN_TOOL} for model {self.model!r}: "
            f"{quote(reply.text)}",
            usage=usage,
        )

    def _result(self, reply: Reply, usage: Usage) -> Answer:
        text = reply.text
        if not text.strip():
            raise ProviderError(
                f"{SERVICE} answered with no text for model {self.model!r} "
                f"(stop_reason {reply.stop_reason!r})",
                usage=usage,
            )
        return Answer(text, usage)

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> Answer:
        """Send the goal, the completed steps and this step; return the answer text."""
        reply, usage = await self._message(goal, STEP_SYSTEM, step_prompt(goal, step, previous))
        return self._result(reply, usage)

    async def stream_step(
        self, goal: Goal, step: Step, previous: Sequence[Step], emit: Emit
    ) -> Answer:
        """As `run_step`, streaming the answer and passing each text delta to `emit`."""
        reply, usage = await self._message(
            goal, STEP_SYSTEM, step_prompt(goal, step, previous), emit
        )
        return self._result(reply, usage)


@attrs.frozen
class TextBlock:
    """The text of a streamed answer, shaped like the client's text block."""

    text: str
    type: str = "text"


@attrs.frozen
class Reply:
    """The content blocks and stop reason of an answer, streamed or not."""

    content: list[Any]
    stop_reason: str | None

    @property
    def text(self) -> str:
        return "".join(block.text for block in self.content if block.type == "text")


class AnthropicProviders:
    """The plugin that serves ``claude-*`` and ``anthropic/<model>`` (see the module docstring).

    Pass one in ``GoalManager(plugins=[AnthropicProviders(api_key=...)])`` to configure it in
    code; what you leave as None is read from the environment. It is asked before the
    built-in default, which reads only the environment.

    :param api_key: defaults to ``ANTHROPIC_API_KEY``.
    :param base_url: defaults to ``ANTHROPIC_BASE_URL``, then ``https://api.anthropic.com``.
    :param timeout: seconds for one HTTP request; defaults to the client's own (10 minutes).
        The goal's ``step_timeout`` cuts a call short either way.
    :param max_output_tokens: the most tokens one answer may have (the API's ``max_tokens``).
    :param environ: where to read the variables; defaults to `os.environ` at each lookup.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | None = None,
        max_output_tokens: int = MAX_OUTPUT_TOKENS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if max_output_tokens < 1:
            raise ValueError("max_output_tokens must be at least 1")
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_output_tokens = max_output_tokens
        self.environ = environ

    def __repr__(self) -> str:
        return f"AnthropicProviders(base_url={self.base_url!r})"

    def endpoint(self, model: str) -> Endpoint:
        """Where `model` is served; raises `InvalidGoal` (field ``model``) if not configured."""
        env = os.environ if self.environ is None else self.environ
        if not installed("anthropic"):
            raise InvalidGoal(
                f"{model!r} needs the anthropic package: pip install 'goalkit[anthropic]'",
                field="model",
            )
        api_key = self.api_key or env.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise InvalidGoal(
                f"{model!r} needs an Anthropic API key: set ANTHROPIC_API_KEY, or pass "
                "AnthropicProviders(api_key=...) in the manager's plugins",
                field="model",
            )
        base_url = self.base_url or env.get("ANTHROPIC_BASE_URL") or None
        return Endpoint(base_url, api_key, self.timeout, self.max_output_tokens)

    @hookimpl
    def goalkit_model_provider(self, model: str) -> AnthropicProvider | None:
        """Serve the Claude model names, configured by this plugin."""
        name = route(model)
        return None if name is None else AnthropicProvider(name, self.endpoint(model))


@hookimpl
def goalkit_model_provider(model: str) -> AnthropicProvider | None:
    """The built-in default: serve the Claude model names configured by the environment."""
    return AnthropicProviders().goalkit_model_provider(model)
