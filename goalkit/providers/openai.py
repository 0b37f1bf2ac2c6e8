"""The OpenAI-compatible provider: chat completions on OpenAI, Ollama, vLLM and llama.cpp.

Built on the official ``openai`` client (``pip install 'goalkit[openai]'``), imported only
when a model of this family is first used. Model names it serves:

=====================================  ==========================================
``gpt-*``, ``chatgpt-*``, ``o1*``,      OpenAI; key from ``OPENAI_API_KEY``, URL
``o3*``, ``o4*``, ``openai/<model>``    from ``OPENAI_BASE_URL`` (optional)
``ollama/<model>``                      Ollama at ``OLLAMA_HOST`` (default
                                        ``http://127.0.0.1:11434``) + ``/v1``; no key
``vllm/<model>``, ``llamacpp/<model>``  any OpenAI-compatible server at
                                        ``OPENAI_BASE_URL``; key optional
=====================================  ==========================================

Configuration comes from an `OpenAIProviders` plugin given to the manager, else from those
environment variables (the built-in default plugin reads only the environment), never from
a request. A model of this family that is not configured (no key, no server URL, no client
package) makes `GoalManager.create` fail with an `InvalidGoal` naming ``model`` and what to
set.

Deliberate choices: the client's own retries are off (``max_retries=0``), so the engine's
retry policy and ``step_timeout`` are the only ones in charge, and each call uses a client of
its own, closed right after, so no connection outlives the call that opened it and the
provider needs no ``aclose``.

Usage: each call's ``usage`` (prompt and completion tokens) is reported through
`goalkit.Answer`, also for a malformed answer (on its `ProviderError`). With a token budget
each call's answer is capped at what is left (``max_completion_tokens`` for OpenAI,
``max_tokens`` for compatible servers). `stream_step` streams (``stream=True``, usage asked
for in the last chunk) for the manager's ``live_output``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

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
    from openai import AsyncOpenAI
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

__all__ = ["OpenAIProvider", "OpenAIProviders", "goalkit_model_provider", "route"]

Kind = Literal["openai", "ollama", "vllm", "llamacpp"]

OLLAMA_DEFAULT = "http://127.0.0.1:11434"
OLLAMA_PORT = 11434
SERVICES: dict[Kind, str] = {
    "openai": "OpenAI",
    "ollama": "Ollama",
    "vllm": "vLLM",
    "llamacpp": "llama.cpp",
}
_PREFIXES: tuple[Kind, ...] = ("openai", "ollama", "vllm", "llamacpp")
_OPENAI_NAMES = re.compile(r"^(?:gpt-|chatgpt-|o[134](?:$|-))")


def route(model: str) -> tuple[Kind, str] | None:
    """Which server kind serves `model`, and the model name to send it; None if not ours.

    A ``kind/`` prefix wins (and is stripped); then the OpenAI name families.
    """
    kind, slash, rest = model.partition("/")
    if slash:
        return (kind, rest) if kind in _PREFIXES and rest else None
    if _OPENAI_NAMES.match(model):
        return "openai", model
    return None


def ollama_url(host: str) -> str:
    """The OpenAI-compatible base URL for an ``OLLAMA_HOST`` value, read as Ollama reads it.

    ``host[:port]`` without a scheme means ``http`` on port 11434; a URL keeps its own port
    (or its scheme's default). A bind-all address (``0.0.0.0``) is reached on 127.0.0.1.
    """
    host = host.strip().rstrip("/")
    schemeless = "://" not in host
    parts = urlsplit(f"http://{host}" if schemeless else host)
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = parts.port or (OLLAMA_PORT if schemeless else None)
    netloc = f"{hostname}:{port}" if port else hostname
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parts.scheme}://{netloc}{path}"


@attrs.frozen
class Endpoint:
    """Where and how to reach one server: what a provider needs besides its model name."""

    service: str
    base_url: str | None
    api_key: str = attrs.field(repr=False)
    timeout: float | None = None


class OpenAIProvider:
    """A `ModelProvider` for one model on one OpenAI-compatible chat-completions server.

    `plan` asks for the steps as structured output (``response_format`` with a JSON schema)
    and checks the answer; `run_step` sends the goal, the completed steps with their results,
    and the step, and returns the answer text. Client errors become `ProviderError`: 429 and
    5xx retryable (honouring ``Retry-After``), 401/403/400/404/422 final.
    """

    def __init__(self, model: str, endpoint: Endpoint) -> None:
        self.model = model
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.model!r}, service={self.endpoint.service!r})"

    def _client(self) -> AsyncOpenAI:
        import openai

        endpoint = self.endpoint
        return openai.AsyncOpenAI(
            **client_options(endpoint.api_key, endpoint.base_url, endpoint.timeout)
        )

    async def _complete(
        self,
        goal: Goal,
        messages: list[ChatCompletionMessageParam],
        emit: Emit | None = None,
        **options: Any,
    ) -> tuple[str, Usage]:
        """One chat completion: the answer text and the usage the server reported.

        With `emit` the answer is streamed (``stream=True``, asking for usage in the last
        chunk) and each piece of text is passed to it as it arrives.
        """
        import openai

        left = goal.tokens_left
        if left is not None:
            # OpenAI itself wants max_completion_tokens (its reasoning models refuse
            # max_tokens); compatible servers know max_tokens.
            cap = "max_completion_tokens" if self.endpoint.service == "OpenAI" else "max_tokens"
            options[cap] = max(left, 1)
        # Built in a worker thread: importing the client and creating its SSL context take
        # tens of milliseconds that should not block the event loop.
        client = await anyio.to_thread.run_sync(self._client)
        usage = NO_USAGE
        try:
            if emit is None:
                response: ChatCompletion = await client.chat.completions.create(
                    model=self.model, messages=messages, **options
                )
                usage = _usage(response.usage)
                if not response.choices:
                    raise self._malformed("no choices", "", usage)
                message = response.choices[0].message
                text, refusal = message.content or "", message.refusal
            else:
                stream = await client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    **options,
                )
                pieces: list[str] = []
                refusals: list[str] = []
                async with stream:
                    async for chunk in stream:
                        if chunk.usage is not None:
                            usage = _usage(chunk.usage)
                        for choice in chunk.choices[:1]:
                            if choice.delta.content:
                                pieces.append(choice.delta.content)
                                emit(choice.delta.content)
                            if choice.delta.refusal:
                                refusals.append(choice.delta.refusal)
                text, refusal = "".join(pieces), "".join(refusals) or None
        except openai.APIStatusError as exc:
            raise http_fault(
                self.endpoint.service,
                self.model,
                exc.status_code,
                exc.response.headers,
                exc.body,
                exc.message,
                (self.endpoint.api_key,),
            ) from None
        except openai.APIConnectionError as exc:
            raise connection_fault(self.endpoint.service, str(client.base_url), exc) from None
        except openai.APIError as exc:  # an error event in the middle of a stream
            raise ProviderError(
                f"{self.endpoint.service} failed for model {self.model!r}: {exc.message}",
                usage=usage,
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
        if not text and refusal:
            raise self._malformed("a refusal", refusal, usage)
        return text, usage

    def _malformed(self, what: str, said: str, usage: Usage) -> ProviderError:
        return ProviderError(
            f"{self.endpoint.service} answered with {what} for model {self.model!r}: {quote(said)}",
            usage=usage,
        )

    async def plan(self, goal: Goal, max_steps: int) -> Answer:
        """Ask for 1 to `max_steps` steps as JSON matching the plan schema."""
        text, usage = await self._complete(
            goal,
            [
                {"role": "system", "content": PLAN_SYSTEM},
                {"role": "user", "content": plan_prompt(goal, max_steps)},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "plan", "strict": True, "schema": plan_schema(max_steps)},
            },
        )
        try:
            return Answer(parse_plan(text, max_steps), usage)
        except ProviderError as exc:
            exc.usage = usage  # a malformed plan's tokens were spent all the same
            raise

    def _step_messages(
        self, goal: Goal, step: Step, previous: Sequence[Step]
    ) -> list[ChatCompletionMessageParam]:
        return [
            {"role": "system", "content": STEP_SYSTEM},
            {"role": "user", "content": step_prompt(goal, step, previous)},
        ]

    def _result(self, text: str, usage: Usage) -> Answer:
        if not text.strip():
            raise self._malformed("an empty answer", text, usage)
        return Answer(text, usage)

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> Answer:
        """Send the goal, the completed steps and this step; return the answer text."""
        text, usage = await self._complete(goal, self._step_messages(goal, step, previous))
        return self._result(text, usage)

    async def stream_step(
        self, goal: Goal, step: Step, previous: Sequence[Step], emit: Emit
    ) -> Answer:
        """As `run_step`, streaming the answer and passing each piece of text to `emit`."""
        text, usage = await self._complete(goal, self._step_messages(goal, step, previous), emit)
        return self._result(text, usage)


def _usage(usage: CompletionUsage | None) -> Usage:
    if usage is None:
        return NO_USAGE
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)


class OpenAIProviders:
    """The plugin that serves OpenAI-compatible model names (see the module docstring).

    Pass one in ``GoalManager(plugins=[OpenAIProviders(api_key=...)])`` to configure it in
    code; what you leave as None is read from the environment. It is asked before the
    built-in default, which reads only the environment.

    :param api_key: the key for OpenAI (``gpt-*`` …) and for ``vllm/`` and ``llamacpp/``
        servers; defaults to ``OPENAI_API_KEY``.
    :param base_url: the API URL for OpenAI names and for ``vllm/`` and ``llamacpp/``;
        defaults to ``OPENAI_BASE_URL``, then (OpenAI only) ``https://api.openai.com/v1``.
    :param ollama_host: where Ollama listens; defaults to ``OLLAMA_HOST``, then
        ``http://127.0.0.1:11434``. ``/v1`` is appended.
    :param timeout: seconds for one HTTP request; defaults to the client's own (10 minutes).
        The goal's ``step_timeout`` cuts a call short either way.
    :param environ: where to read the variables; defaults to `os.environ` at each lookup.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        ollama_host: str | None = None,
        timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.ollama_host = ollama_host
        self.timeout = timeout
        self.environ = environ

    def __repr__(self) -> str:
        return f"OpenAIProviders(base_url={self.base_url!r}, ollama_host={self.ollama_host!r})"

    def endpoint(self, model: str, kind: Kind) -> Endpoint:
        """Where `model` is served; raises `InvalidGoal` (field ``model``) if not configured."""
        env = os.environ if self.environ is None else self.environ
        service = SERVICES[kind]
        if not installed("openai"):
            raise InvalidGoal(
                f"{model!r} needs the openai package: pip install 'goalkit[openai]'",
                field="model",
            )
        if kind == "ollama":
            host = self.ollama_host or env.get("OLLAMA_HOST") or OLLAMA_DEFAULT
            return Endpoint(service, ollama_url(host), "ollama", self.timeout)
        api_key = self.api_key or env.get("OPENAI_API_KEY")
        base_url = self.base_url or env.get("OPENAI_BASE_URL") or None
        if kind == "openai":
            if not api_key:
                raise InvalidGoal(
                    f"{model!r} needs an OpenAI API key: set OPENAI_API_KEY, or pass "
                    "OpenAIProviders(api_key=...) in the manager's plugins",
                    field="model",
                )
            return Endpoint(service, base_url, api_key, self.timeout)
        if not base_url:
            raise InvalidGoal(
                f"{model!r} needs the URL of the {service} server: set OPENAI_BASE_URL "
                "(e.g. http://127.0.0.1:8000/v1), or pass OpenAIProviders(base_url=...) in "
                "the manager's plugins",
                field="model",
            )
        # Local servers often take no key, but the client insists on one.
        return Endpoint(service, base_url, api_key or "none", self.timeout)

    @hookimpl
    def goalkit_model_provider(self, model: str) -> OpenAIProvider | None:
        """Serve the OpenAI-compatible model names, configured by this plugin."""
        routed = route(model)
        if routed is None:
            return None
        kind, name = routed
        return OpenAIProvider(name, self.endpoint(model, kind))


@hookimpl
def goalkit_model_provider(model: str) -> OpenAIProvider | None:
    """The built-in default: serve the OpenAI-compatible names configured by the environment."""
    return OpenAIProviders().goalkit_model_provider(model)
