"""The built-in ``scripted`` provider: plans from the description's wording, fixed answers."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goalkit.models import Goal, Step, StepSpec, Usage
from goalkit.providers import ModelProvider
from goalkit.providers.scripted import ScriptedProvider, goalkit_model_provider, split_clauses

pytestmark = pytest.mark.anyio


def make_goal(description: str, *, max_steps: int = 10, total_steps: int = 0) -> Goal:
    return Goal(
        id="goal-0000000000000000",
        workflow_id="wf-0000000000000000",
        description=description,
        model="scripted",
        mode="plan",
        max_steps=max_steps,
        max_retries=2,
        tags=(),
        owner="local",
        status="active",
        phase="decomposing",
        created_at=0,
        updated_at=0,
        total_steps=total_steps,
    )


async def plan(description: str, max_steps: int = 10) -> list[StepSpec]:
    answer = await ScriptedProvider().plan(make_goal(description, max_steps=max_steps), max_steps)
    return list(answer.value)


def titles(steps: list[StepSpec]) -> list[str]:
    return [step.title for step in steps]


class TestSplitClauses:
    """`split_clauses` cuts a description at sentence ends, sequence words and list items."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "Find sources. Summarise them! Publish?",
                ["Find sources", "Summarise them", "Publish"],
            ),
            ("collect data; clean it; chart it", ["Collect data", "Clean it", "Chart it"]),
            (
                "Find sources, then summarise them and then write a report. Finally, review it",
                ["Find sources", "Summarise them", "Write a report", "Review it"],
            ),
            (
                "Plan a trip:\n- book flights\n* book a hotel\n3) pack",
                ["Plan a trip", "Book flights", "Book a hotel", "Pack"],
            ),
            ("1. Plan 2. Build 3. Ship", ["Plan", "Build", "Ship"]),
            ("Draft the intro. Then write the body.", ["Draft the intro", "Write the body"]),
        ],
    )
    def test_splits(self, text: str, expected: list[str]) -> None:
        """Each sentence, sequence clause or list item becomes one clause, capitalised."""
        assert split_clauses(text) == expected

    def test_decimals_abbreviations_and_domains_do_not_split(self) -> None:
        """A dot inside a number, a domain or after a common abbreviation is not a sentence end."""
        text = "Compare Python 3.12 vs. 3.13 (e.g. speed) on example.com"
        assert split_clauses(text) == [text]

    def test_fragments_without_words_are_dropped(self) -> None:
        """Punctuation-only fragments and blank lines yield no clause."""
        assert split_clauses("...\n\n - \n;;") == []


class TestPlan:
    """`ScriptedProvider.plan` turns a description into 1 to max_steps steps."""

    async def test_single_sentence_gets_research_draft_review(self) -> None:
        """One clause gives the fixed Research, Draft, Review plan naming the goal."""
        steps = await plan("Research quantum computing advances in 2026.")
        assert titles(steps) == [
            "Research: Research quantum computing advances in 2026",
            "Draft: Research quantum computing advances in 2026",
            "Review: Research quantum computing advances in 2026",
        ]
        assert all(step.description for step in steps)

    async def test_fixed_plan_is_cut_to_max_steps(self) -> None:
        """With room for fewer than three steps the fixed plan keeps its first ones."""
        assert titles(await plan("Write a poem", 2)) == [
            "Research: Write a poem",
            "Draft: Write a poem",
        ]
        assert titles(await plan("Write a poem", 1)) == ["Research: Write a poem"]

    async def test_each_clause_is_a_step(self) -> None:
        """Several clauses give one step each, in order, with the clause as description."""
        steps = await plan("Find sources, then summarise them. Finally review it")
        assert titles(steps) == ["Find sources", "Summarise them", "Review it"]
        assert [step.description for step in steps] == titles(steps)

    async def test_tail_is_merged_into_the_last_step(self) -> None:
        """More clauses than max_steps: the last step holds the rest, joined by semicolons."""
        steps = await plan("a; b; c; d; e", 3)
        assert titles(steps) == ["A", "B", "C; D; E"]

    async def test_max_steps_one_merges_everything(self) -> None:
        """With max_steps 1 every clause ends up in the single step."""
        assert titles(await plan("Find sources. Summarise them. Publish", 1)) == [
            "Find sources; Summarise them; Publish"
        ]

    async def test_long_titles_are_cut_but_descriptions_kept(self) -> None:
        """Titles are at most 200 characters; the step's description keeps the full clause."""
        long = "word " * 100
        steps = await plan(f"{long}. {long}")
        assert all(len(step.title) <= 200 for step in steps)
        assert steps[0].title.endswith("…")
        assert steps[0].description == long.strip().capitalize()

    async def test_blank_description_still_gives_titles(self) -> None:
        """A description with no words still plans non-empty steps."""
        assert titles(await plan("...", 3)) == ["Research: ...", "Draft: ...", "Review: ..."]

    async def test_deterministic(self) -> None:
        """The same description and max_steps always give the same plan."""
        text = "Collect data, then clean it. Chart it; publish it"
        assert await plan(text, 3) == await plan(text, 3)


class TestPlanProperties:
    """For any description and max_steps the plan respects the provider contract."""

    @settings(max_examples=200, deadline=None)
    @given(description=st.text(min_size=1, max_size=400), max_steps=st.integers(1, 100))
    def test_plan_length_and_titles(self, description: str, max_steps: int) -> None:
        """1 to max_steps steps, at least 2 when allowed, every title non-empty and short."""
        steps = anyio.run(plan, description, max_steps)
        assert 1 <= len(steps) <= max_steps
        if max_steps >= 2:
            assert len(steps) >= 2
        for step in steps:
            assert isinstance(step, StepSpec)
            assert step.title.strip()
            assert step.title == step.title.strip()
            assert len(step.title) <= 200


class TestRunStep:
    """`ScriptedProvider.run_step` answers with a fixed sentence about the step."""

    async def test_result_names_step_and_previous(self) -> None:
        """The result gives the step's position, title and how many steps it builds on."""
        goal = make_goal("x", total_steps=3)
        first = Step(index=1, title="Research", status="completed", result="r")
        step = Step(index=2, title="Draft", status="running", attempts=1)
        provider = ScriptedProvider()
        second = await provider.run_step(goal, step, [first])
        assert second.value == "[scripted] Step 2/3 'Draft': done (builds on 1 previous step)"
        # One token per word: description + title + earlier results in, the result out.
        assert second.usage == Usage(input_tokens=1 + 1 + 1, output_tokens=10)
        one = await provider.run_step(goal, Step(index=1, title="Research"), [])
        assert one.value == "[scripted] Step 1/3 'Research': done (first step)"

    async def test_deterministic(self) -> None:
        """Two providers give the same answer for the same inputs."""
        goal = make_goal("x", total_steps=2)
        step = Step(index=2, title="Draft")
        previous = [Step(index=1, title="Research", status="completed", result="r")]
        answers = {await ScriptedProvider().run_step(goal, step, previous) for _ in range(3)}
        assert len(answers) == 1

    async def test_delay_waits_and_can_be_cancelled(self) -> None:
        """With a delay the call waits, and cancelling the scope stops it at once."""
        provider = ScriptedProvider(delay=30)
        with anyio.move_on_after(0.05) as scope:
            await provider.run_step(make_goal("x"), Step(index=1, title="t"), [])
        assert scope.cancelled_caught

    async def test_cancelled_even_without_delay(self) -> None:
        """A call made under a cancelled scope does not return a result."""
        with anyio.CancelScope() as scope:
            scope.cancel()
            await ScriptedProvider().run_step(make_goal("x"), Step(index=1, title="t"), [])
            pytest.fail("run_step returned under a cancelled scope")

    def test_bad_delay_is_refused(self) -> None:
        """A negative or non-finite delay is a ValueError."""
        for delay in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="delay"):
                ScriptedProvider(delay=delay)


class TestHook:
    """The `goalkit_model_provider` hook serves ``scripted`` and ``scripted/<variant>``."""

    def test_scripted(self) -> None:
        """``scripted`` is an immediate provider that satisfies the protocol."""
        provider = goalkit_model_provider(model="scripted")
        assert isinstance(provider, ScriptedProvider)
        assert isinstance(provider, ModelProvider)
        assert provider.delay == 0

    @pytest.mark.parametrize(
        ("model", "delay"),
        [
            ("scripted/slow", 0.5),
            ("scripted/0.2", 0.2),
            ("scripted/demo", 0.0),
            ("scripted/-3", 0.0),
        ],
    )
    def test_variants(self, model: str, delay: float) -> None:
        """Variants pick a delay: ``slow`` is 0.5 s, a number is seconds, others none."""
        provider = goalkit_model_provider(model=model)
        assert provider is not None
        assert provider.delay == delay

    @pytest.mark.parametrize("model", ["gpt-4o", "claude-sonnet-4", "scriptedx", "Scripted"])
    def test_other_models_are_not_served(self, model: str) -> None:
        """Any other model name gets None, leaving it to other plugins."""
        assert goalkit_model_provider(model=model) is None


class TestWithManager:
    """A goal on the scripted model runs to completion through the real engine."""

    async def test_goal_completes(self) -> None:
        """The goal completes with the last step's sentence as its result."""
        from goalkit import GoalManager

        async with GoalManager("memory://", entry_points=False) as manager:
            goal = await manager.create(description="Find sources, then summarise them")
            goal = await manager.wait(goal.id, timeout=10)
        assert goal.status == "completed"
        assert [step.title for step in goal.steps] == ["Find sources", "Summarise them"]
        assert (
            goal.result == "[scripted] Step 2/2 'Summarise them': done (builds on 1 previous step)"
        )
