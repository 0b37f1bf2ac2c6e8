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
from goalkit.models import JSON, Goal, Step, StepSpec
from goalkit.providers._common import (
    PLAN_SYSTEM,
    STEP_SYSTEM,
    Usage,
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

        options: dict[str, Any] = {}
        if self.endpoint.timeout is not None:
            options["timeout"] = self.endpoint.timeout
        return anthropic.AsyncAnthropic(
            api_key=self.endpoint.api_key,
            base_url=self.endpoint.base_url,
            max_retries=0,  # the engine retries, with its backoff and Retry-After
            **options,
        )

    async def _message(self, system: str, prompt: str, **options: Any) -> tuple[Message, Usage]:
        import anthropic

        # Built in a worker thread: importing the client and creating its SSL context take
        # long enough to stall the event loop.
        client = await anyio.to_thread.run_sync(self._client)
        try:
            message: Message = await client.messages.create(
                model=self.model,
                max_tokens=self.endpoint.max_output_tokens,
                system=system,
                messages=[{"role": "user", "content": prompt}],
                **options,
            )
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
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
        return message, Usage(message.usage.input_tokens, message.usage.output_tokens)

    @staticmethod
    def _text(message: Message) -> str:
        return "".join(block.text for block in message.content if block.type == "text")

    async def plan(self, goal: Goal, max_steps: int) -> list[StepSpec]:
        """Ask for 1 to `max_steps` steps through a forced ``submit_plan`` tool call."""
        message, _usage = await self._message(
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
        # Part 2 records `_usage` here (on the goal: planning has no step of its own).
        for block in message.content:
            if block.type == "tool_use" and block.name == PLAN_TOOL:
                return parse_plan(block.input, max_steps, said=json.dumps(block.input))
        raise ProviderError(
            f"malformed plan: {SERVICE} did not call {PLAN_TOOL} for model {self.model!r}: "
            f"{quote(self._text(message))}"
        )

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> JSON:
        """Send the goal, the completed steps and this step; return the answer text."""
        message, _usage = await self._message(STEP_SYSTEM, step_prompt(goal, step, previous))
        # Part 2 records `_usage` here, on the step (and in its goal.step_completed event).
        text = self._text(message)
        if not text.strip():
            raise ProviderError(
                f"{SERVICE} answered with no text for model {self.model!r} "
                f"(stop_reason {message.stop_reason!r})"
            )
        return text


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
