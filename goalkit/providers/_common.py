"""What the OpenAI-compatible and Anthropic providers share: prompts, the plan schema, the
parsing of a plan answer, and the mapping of HTTP faults to `ProviderError`.

Private: the two provider modules are its only users. It imports neither client library;
the fault mapping works on what both clients' exceptions carry (a status code, the response
headers, the decoded error body).
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from goalkit.errors import ProviderError
from goalkit.models import JSON, Goal, Step, StepSpec

__all__ = [
    "PLAN_SYSTEM",
    "STEP_SYSTEM",
    "client_options",
    "http_fault",
    "installed",
    "parse_plan",
    "plan_prompt",
    "plan_schema",
    "quote",
    "retry_after",
    "step_prompt",
]

QUOTE_CHARS = 200
"""How much of a malformed answer an error message quotes."""

MAX_RETRY_AFTER = 300.0
"""A ``Retry-After`` longer than this (seconds) is cut to it, so one header cannot park a
goal for hours; the engine's own backoff still applies on top."""

PLAN_SYSTEM = (
    "You break a goal into a short sequence of concrete steps that, carried out in order, "
    "achieve it. Give each step a short title and a description of what to do in it. Use as "
    "few steps as the goal needs."
)
STEP_SYSTEM = (
    "You carry out one step of a larger goal, building on the results of the steps before "
    "it. Answer with the result of this step itself (the content asked for), not with a "
    "description of what you would do."
)


def installed(package: str) -> bool:
    """Whether `package` can be imported, without importing it (the clients import slowly)."""
    return importlib.util.find_spec(package) is not None


def client_options(api_key: str, base_url: str | None, timeout: float | None) -> dict[str, Any]:
    """The keyword arguments both official clients take, built the same way for each.

    Client-side retries are off: the engine retries, with its backoff and ``Retry-After``.
    Without a `timeout` the client keeps its own default.
    """
    options: dict[str, Any] = {"api_key": api_key, "base_url": base_url, "max_retries": 0}
    if timeout is not None:
        options["timeout"] = timeout
    return options


def plan_schema(max_steps: int) -> dict[str, Any]:
    """The JSON schema of a plan answer: ``{"steps": [{"title", "description"}, …]}``.

    Written for OpenAI's strict structured outputs (every property required, no others),
    which the Anthropic tool input accepts as it is.
    """
    return {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_steps,
                "items": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string", "description": "a few words"},
                        "description": {"type": "string", "description": "what to do"},
                    },
                    "required": ["title", "description"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


def plan_prompt(goal: Goal, max_steps: int) -> str:
    """The user message that asks for a plan."""
    most = "one step" if max_steps == 1 else f"at most {max_steps} steps"
    return f"Goal:\n{goal.description}\n\nPlan {most} to achieve this goal."


def _text(result: JSON) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def step_prompt(goal: Goal, step: Step, previous: Sequence[Step]) -> str:
    """The user message that asks for one step: the goal, the steps done, and this step."""
    parts = [f"Goal:\n{goal.description}"]
    if previous:
        done = "\n\n".join(
            f"Step {s.index}: {s.title}\nResult:\n{_text(s.result)}" for s in previous
        )
        parts.append(f"Completed steps and their results:\n\n{done}")
    total = max(goal.total_steps, step.index)
    current = f"Current step ({step.index} of {total}): {step.title}"
    if step.description and step.description != step.title:
        current += f"\n{step.description}"
    parts.append(current)
    parts.append(f"Carry out step {step.index} and answer with its result.")
    return "\n\n".join(parts)


def quote(text: str) -> str:
    """The start of what a model said, for an error message (one line, at most 200 chars)."""
    text = text.strip()
    cut = text[:QUOTE_CHARS]
    return repr(cut) + ("…" if len(text) > QUOTE_CHARS else "")


_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def parse_plan(answer: object, max_steps: int, *, said: str | None = None) -> list[StepSpec]:
    """Check a plan answer (JSON text or decoded data) and turn it into step specs.

    Accepts ``{"steps": [...]}`` (what the schema asks for) and, from servers that ignore
    the schema, a bare list or a JSON text inside a Markdown code fence. Anything else raises
    a retryable `ProviderError` quoting the start of `said` (what the model said).
    """
    raw = said if said is not None else answer if isinstance(answer, str) else json.dumps(answer)
    data = answer
    if isinstance(answer, str):
        text = answer.strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1).strip()
        try:
            data = json.loads(text)
        except ValueError:
            raise _malformed("is not JSON", raw) from None
    steps = data.get("steps") if isinstance(data, Mapping) else data
    if not isinstance(steps, list) or not steps:
        raise _malformed('has no "steps" list', raw)
    if len(steps) > max_steps:
        raise _malformed(f"has {len(steps)} steps, more than max_steps={max_steps}", raw)
    specs = []
    for i, item in enumerate(steps, start=1):
        if isinstance(item, str):
            item = {"title": item}
        title = item.get("title") if isinstance(item, Mapping) else None
        description = item.get("description") if isinstance(item, Mapping) else None
        if not isinstance(title, str) or not title.strip():
            raise _malformed(f"step {i} has no title", raw)
        if description is not None and not isinstance(description, str):
            raise _malformed(f"step {i} has a description that is not a string", raw)
        specs.append(StepSpec(title=" ".join(title.split()), description=description or None))
    return specs


def _malformed(problem: str, said: str) -> ProviderError:
    return ProviderError(f"malformed plan: the answer {problem}: {quote(said)}")


# -- faults -----------------------------------------------------------------------------------


def retry_after(headers: Mapping[str, str], *, clock: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    None when neither header is there or readable; capped at `MAX_RETRY_AFTER`.
    """
    seconds: float | None = None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            seconds = float(value) / 1000
        except ValueError:
            seconds = None
    value = headers.get("retry-after")
    if seconds is None and value is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                date = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                date = None
            if date is not None and date.tzinfo is not None:
                seconds = date.timestamp() - (time.time() if clock is None else clock)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


_KEYLIKE = re.compile(r"\b(sk|key|token)[-_][A-Za-z0-9*_.-]{6,}")


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """`text` with the given secrets, and anything that looks like an API key, masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub(r"\1-***", text)


def _detail(body: object, fallback: str) -> str:
    # OpenAI's client unwraps the body to its "error" object; Anthropic's keeps the envelope.
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    return fallback


def http_fault(
    service: str,
    model: str,
    status: int,
    headers: Mapping[str, str],
    body: object,
    fallback: str,
    secrets: Sequence[str | None] = (),
) -> ProviderError:
    """The `ProviderError` for an HTTP error answer of a model API.

    408, 409, 429 and 5xx are retryable, after the ``Retry-After`` the server asked for;
    other 4xx (a rejected key, no access, an invalid request, an unknown model) are final,
    since sending the same request again cannot help. The message never holds the key.
    """
    detail = " ".join(redact(_detail(body, fallback), secrets).split())[:300]
    if status == 429 or status in (408, 409) or status >= 500:
        what = "rate limited" if status == 429 else "unavailable"
        return ProviderError(
            f"{service} {what} ({status}) for model {model!r}: {detail}",
            retryable=True,
            retry_after=retry_after(headers),
        )
    if status in (401, 403):
        what = "rejected the API key" if status == 401 else "refused access"
        return ProviderError(
            f"{service} {what} ({status}) for model {model!r}: {detail}", retryable=False
        )
    if status == 404:
        return ProviderError(
            f"{service} does not know model {model!r} or the endpoint (404): {detail}",
            retryable=False,
        )
    return ProviderError(
        f"{service} refused the request ({status}) for model {model!r}: {detail}",
        retryable=False,
    )


def connection_fault(service: str, url: str, exc: BaseException) -> ProviderError:
    """The retryable `ProviderError` for a request that got no answer (refused, reset, timed out)."""
    cause = exc.__cause__ or exc
    return ProviderError(
        f"{service} at {url} did not answer: {type(cause).__name__}: {cause}".rstrip(": "),
        retryable=True,
    )
