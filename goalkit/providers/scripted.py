"""The built-in ``scripted`` provider: a deterministic, offline stand-in for a model.

It is not a model and calls none. It exists so goalkit runs end to end with no key, no server
and no network: the default model, the demos, the tests. Its plan comes from the wording of the
goal's description, and each step's "result" is a sentence saying that the step was done.

How `plan` splits a description (see `split_clauses`):

1. Each line is a candidate. A line starting with a bullet (``-``, ``*``, ``+``, ``•``) or a
   number (``1.``, ``2)``, ``(3)``) is one item; the marker is dropped.
2. Inside a line, numbered markers (``1. … 2. …``), semicolons and sentence ends (``.``,
   ``!``, ``?`` followed by a space or the end) separate clauses. Common abbreviations (``e.g.``,
   ``i.e.``, ``etc.``, ``vs.``, ``Dr.`` …) do not end a sentence, nor does the dot in ``3.5``.
3. Sequence words separate clauses too: ``, then``, ``and then``, ``, after that``,
   ``, afterwards``, ``, next``, ``, finally``. A clause that starts with one of these words
   (``Then write it up``) loses it.
4. Clauses are stripped of surrounding space and trailing punctuation; fragments without a
   letter or digit are dropped; the first letter is capitalised.

With two clauses or more, each becomes a step, and when there are more than `max_steps` the
tail is merged (joined with ``"; "``) into the last step. With a single clause the plan is the
fixed ``Research: …``, ``Draft: …``, ``Review: …``, cut to `max_steps`. Titles are at most
200 characters (cut with ``…``); the step's description keeps the full text.

Usage: it reports one token per word (runs of non-space characters), deterministically, so
budgets and usage can be tried offline: a plan call's input is the description and its output
the plan's titles and descriptions; a step call's input is the description, the step's title
and the results of the steps before it, and its output the result. With the manager's
``live_output`` on, `stream_step` hands out the result a word at a time.

Model names: ``scripted`` answers at once; ``scripted/slow`` waits 0.5 s per call;
``scripted/<seconds>`` (``scripted/0.2``) waits that long per call, up to 60 s; any other
``scripted/<label>`` is the plain provider under another name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import anyio
import anyio.lowlevel

from goalkit.hookspecs import hookimpl
from goalkit.models import Answer, Goal, Step, StepSpec, Usage
from goalkit.providers import Emit

__all__ = ["ScriptedProvider", "goalkit_model_provider", "split_clauses"]

MODEL = "scripted"
SLOW_DELAY = 0.5
MAX_DELAY = 60.0
MAX_TITLE = 200

FIXED_PLAN = (
    ("Research", "Gather what is known that bears on the goal."),
    ("Draft", "Produce a first version of the outcome from the research."),
    ("Review", "Check the draft against the goal and settle the final result."),
)

_ITEM_MARKER = re.compile(r"^\s*(?:[-*+•]\s+|\(?\d{1,3}[.)]\s+)")
# A number marker inside a line, like " 2. " in "1. Plan 2. Build"; one or two digits, so
# a year ending a sentence ("in 2026. Then…") is not taken for one.
_INLINE_NUMBER = re.compile(r"(?:(?<=\s)|^)\(?\d{1,2}[.)]\s+")
# A sentence end: ".", "!" or "?" followed by white space or the end of the text ("3.5" and
# "example.com" do not match), or any ";".
_SENTENCE_END = re.compile(r";|[.!?]+(?=\s|$)")
_SEQUENCE = re.compile(
    r",?\s+and\s+then\s+|,\s*(?:and\s+)?(?:then|after\s+that|afterwards|next|finally)[,\s]\s*",
    re.IGNORECASE,
)
_LEADING_WORD = re.compile(
    r"^(?:and\s+)?(?:then|after\s+that|afterwards|next|finally|lastly)\b[,:]?\s*", re.IGNORECASE
)
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "cf", "approx", "dr", "mr", "mrs", "ms", "prof", "st", "no", "fig"}
)
_WORD = re.compile(r"\w")


def split_clauses(text: str) -> list[str]:
    """Split a description into its clauses, in order (the rules are in the module docstring)."""
    clauses: list[str] = []
    for line in text.splitlines():
        line = _ITEM_MARKER.sub("", line, count=1)
        for numbered in _INLINE_NUMBER.split(line):
            for sentence in _sentences(numbered):
                for part in _SEQUENCE.split(sentence):
                    clause = _clean(part)
                    if clause:
                        clauses.append(clause)
    return clauses


def _sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start : match.start()].rsplit(None, 1)
        last_word = before[-1].lstrip("([{\"'").lower() if before else ""
        if match.group() == "." and last_word in _ABBREVIATIONS:
            continue
        sentences.append(text[start : match.start()])
        start = match.end()
    sentences.append(text[start:])
    return sentences


def _clean(part: str) -> str:
    clause = _LEADING_WORD.sub("", part.strip()).strip().rstrip(".,;:!? ").strip()
    if not _WORD.search(clause):
        return ""
    return clause[0].upper() + clause[1:]


def _title(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1].rstrip() + "…"


def _plan(description: str, max_steps: int) -> list[StepSpec]:
    clauses = split_clauses(description)
    if len(clauses) < 2:
        subject = clauses[0] if clauses else (" ".join(description.split()) or "the goal")
        fixed = [
            StepSpec(title=_title(f"{verb}: {subject}"), description=what)
            for verb, what in FIXED_PLAN
        ]
        return fixed[:max_steps]
    if len(clauses) > max_steps:
        clauses = [*clauses[: max_steps - 1], "; ".join(clauses[max_steps - 1 :])]
    return [StepSpec(title=_title(clause), description=clause) for clause in clauses]


def _result(goal: Goal, step: Step, previous: Sequence[Step]) -> str:
    total = max(goal.total_steps, step.index)
    if not previous:
        context = "first step"
    else:
        context = f"builds on {len(previous)} previous step{'s' if len(previous) != 1 else ''}"
    return f"[scripted] Step {step.index}/{total} {step.title!r}: done ({context})"


class ScriptedProvider:
    """A deterministic, offline `ModelProvider` that needs no model at all.

    Given the same goal, step and previous steps it always answers the same. `delay` is a
    pause in seconds before each answer, for demos and for tests that need time to pass.
    """

    def __init__(self, delay: float = 0.0) -> None:
        if not (math.isfinite(delay) and 0.0 <= delay <= MAX_DELAY):
            raise ValueError(f"delay must be from 0 to {MAX_DELAY} seconds, got {delay!r}")
        self.delay = delay

    def __repr__(self) -> str:
        return f"ScriptedProvider(delay={self.delay!r})"

    async def _pause(self) -> None:
        # A checkpoint even without delay, so a cancelled goal stops here at once.
        await anyio.lowlevel.checkpoint()
        if self.delay:
            await anyio.sleep(self.delay)

    async def plan(self, goal: Goal, max_steps: int) -> Answer:
        """Split the description into 1 to `max_steps` steps (2 or more when allowed)."""
        await self._pause()
        plan = _plan(goal.description, max(1, max_steps))
        said = sum(_words(s.title) + _words(s.description or "") for s in plan)
        return Answer(plan, Usage(_words(goal.description), said))

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> Answer:
        """Return a sentence saying this step is done and how many steps it builds on."""
        await self._pause()
        return _answer(goal, step, previous)

    async def stream_step(
        self, goal: Goal, step: Step, previous: Sequence[Step], emit: Emit
    ) -> Answer:
        """As `run_step`, handing the result to `emit` a word at a time."""
        await self._pause()
        answer = _answer(goal, step, previous)
        for word in re.findall(r"\S+\s*", answer.value):
            emit(word)
            await anyio.lowlevel.checkpoint()
        return answer


def _words(text: str) -> int:
    return len(text.split())


def _answer(goal: Goal, step: Step, previous: Sequence[Step]) -> Answer:
    result = _result(goal, step, previous)
    context = sum(_words(s.result) for s in previous if isinstance(s.result, str))
    said = _words(goal.description) + _words(step.title) + context
    return Answer(result, Usage(said, _words(result)))


def _delay_for(variant: str) -> float:
    if variant == "slow":
        return SLOW_DELAY
    try:
        seconds = float(variant)
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and 0.0 <= seconds <= MAX_DELAY else 0.0


@hookimpl
def goalkit_model_provider(model: str) -> ScriptedProvider | None:
    """Serve ``scripted`` and ``scripted/<variant>`` (see the module docstring)."""
    if model == MODEL:
        return ScriptedProvider()
    prefix = f"{MODEL}/"
    if model.startswith(prefix):
        return ScriptedProvider(delay=_delay_for(model[len(prefix) :]))
    return None
