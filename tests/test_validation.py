"""Validation of every creation field: limits, messages, and a property over arbitrary input."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import goalkit
from goalkit import GoalManager, InvalidGoal
from goalkit.models import BLANK, Goal, Step
from goalkit.testing import QueueProvider

CREATION_FIELDS = {"description", "model", "mode", "max_steps", "max_retries", "tags", "owner"}


def manager_for(*plugins: object, **options: object) -> GoalManager:
    options.setdefault("retry_backoff", 0)
    options.setdefault("default_model", "fake")
    return GoalManager("memory://", plugins=plugins, entry_points=False, **options)  # type: ignore[arg-type]


async def rejected(**fields: Any) -> InvalidGoal:
    """Create a goal that must be refused; check nothing was stored; return the error."""
    async with manager_for(QueueProvider()) as manager:
        fields.setdefault("description", "valid")
        with pytest.raises(InvalidGoal) as info:
            await manager.create(**fields)
        assert (await manager.list()).total == 0
    assert info.value.status == 400
    assert str(info.value).startswith(f"{info.value.field}: ")
    return info.value


async def accepted(**fields: Any) -> Goal:
    """Create a goal that must be accepted, and return it as stored."""
    async with manager_for(QueueProvider()) as manager:
        fields.setdefault("description", "valid")
        goal = await manager.create(**fields)
        stored = await manager.get(goal.id)
    return stored


@pytest.mark.anyio
class TestDescription:
    """The description is 1–10,000 characters after stripping."""

    @pytest.mark.parametrize("text", ["x", "  padded  ", "a" * 10_000, " " * 50 + "b" * 10_000])
    async def test_valid_descriptions_are_stored_stripped(self, text: str) -> None:
        """Surrounding whitespace is dropped and does not count toward the limit."""
        assert (await accepted(description=text)).description == text.strip()

    async def test_every_blank_is_stripped(self) -> None:
        """Both ends lose every `BLANK` character, JavaScript's and Python's whitespace alike."""
        goal = await accepted(description="\ufeff\x85 Write tests\x1c\u2028")
        assert goal.description == "Write tests"

    @pytest.mark.parametrize(
        ("text", "rule"),
        [
            ("", "must not be empty"),
            ("   \n\t ", "must not be empty"),
            ("a" * 10_001, "at most 10000 characters"),
            ("\x1c\x1d\x1e\x1f\x85", "must not be empty or blank"),  # Python-only blanks
            ("\ufeff\u3000", "must not be empty or blank"),  # JavaScript-only and shared
            ("ok \ud800", "must be valid Unicode text"),
            (None, "must be a string"),
            (42, "must be a string"),
            (b"bytes", "must be a string"),
            (["a list"], "must be a string"),
        ],
    )
    async def test_invalid_descriptions_name_the_field_and_rule(
        self, text: object, rule: str
    ) -> None:
        """Empty, whitespace-only, too long or non-string descriptions are refused."""
        error = await rejected(description=text)
        assert error.field == "description"
        assert rule in error.message


@pytest.mark.anyio
class TestMaxSteps:
    """max_steps is an integer from 1 to 100."""

    @pytest.mark.parametrize("value", [1, 10, 100])
    async def test_in_range_is_accepted(self, value: int) -> None:
        """1 and 100 are the inclusive bounds."""
        assert (await accepted(max_steps=value)).max_steps == value

    @pytest.mark.parametrize(
        ("value", "rule"),
        [
            (0, "from 1 to 100, got 0"),
            (101, "from 1 to 100, got 101"),
            (-3, "from 1 to 100"),
            (True, "must be an integer from 1 to 100"),
            (5.0, "must be an integer from 1 to 100"),
            ("5", "must be an integer from 1 to 100"),
            (None, "must be an integer from 1 to 100"),
        ],
    )
    async def test_out_of_range_or_wrong_type_is_refused(self, value: object, rule: str) -> None:
        """0, 101, booleans, floats and strings are refused naming max_steps."""
        error = await rejected(max_steps=value)
        assert error.field == "max_steps"
        assert rule in error.message


@pytest.mark.anyio
class TestMaxRetries:
    """max_retries is an integer from 0 to 10."""

    @pytest.mark.parametrize("value", [0, 5, 10])
    async def test_in_range_is_accepted(self, value: int) -> None:
        """0 and 10 are the inclusive bounds."""
        assert (await accepted(max_retries=value)).max_retries == value

    @pytest.mark.parametrize(
        ("value", "rule"),
        [
            (-1, "from 0 to 10, got -1"),
            (11, "from 0 to 10, got 11"),
            (False, "must be an integer from 0 to 10"),
            (1.5, "must be an integer from 0 to 10"),
        ],
    )
    async def test_out_of_range_or_wrong_type_is_refused(self, value: object, rule: str) -> None:
        """-1, 11 and non-integers are refused naming max_retries."""
        error = await rejected(max_retries=value)
        assert error.field == "max_retries"
        assert rule in error.message

    async def test_none_means_the_managers_default(self) -> None:
        """Leaving max_retries out takes the manager's max_retries."""
        assert (await accepted(max_retries=None)).max_retries == 2


@pytest.mark.anyio
class TestTags:
    """At most 20 distinct tags of 1–64 characters each."""

    async def test_twenty_tags_are_accepted(self) -> None:
        """Twenty distinct tags are the limit, kept in order."""
        tags = [f"tag{i}" for i in range(20)]
        assert (await accepted(tags=tags)).tags == tuple(tags)

    async def test_duplicates_are_dropped_keeping_order(self) -> None:
        """Repeated tags (also after stripping) are stored once, first occurrence first."""
        assert (await accepted(tags=["b", "a", "b", " a ", "c"])).tags == ("b", "a", "c")

    async def test_duplicates_count_toward_the_limit(self) -> None:
        """The limit counts the tags given, as the OpenAPI document's ``maxItems`` does."""
        error = await rejected(tags=[f"t{i}" for i in range(11)] * 2)
        assert error.field == "tags"
        assert "at most 20 tags, got 22" in error.message

    async def test_a_mapping_is_not_a_list_of_tags(self) -> None:
        """A dict (JSON object) is refused rather than taken for its keys."""
        error = await rejected(tags={"qa": 1})
        assert (error.field, error.message) == ("tags", "tags: must be a list of strings")

    async def test_a_64_character_tag_is_accepted(self) -> None:
        """64 characters is the longest tag."""
        assert (await accepted(tags=["x" * 64])).tags == ("x" * 64,)

    async def test_no_tags(self) -> None:
        """Tags are optional; an empty list stores none."""
        assert (await accepted(tags=[])).tags == ()

    @pytest.mark.parametrize(
        ("tags", "rule"),
        [
            ([f"t{i}" for i in range(21)], "at most 20 tags, got 21"),
            ([""], "item 0 must not be empty or blank"),
            (["ok", "   "], "item 1 must not be empty or blank"),
            (["x" * 65], "item 0 must be at most 64 characters after stripping, got 65"),
            (["\x1c\ufeff"], "item 0 must not be empty or blank"),
            (["\ud800"], "item 0 must be valid Unicode text"),
            ("qa", "must be a list of strings"),
            (42, "must be a list of strings"),
            (None, "must be a list of strings"),
            (["ok", 3], "item 1 must be a string"),
            ([None], "item 0 must be a string"),
        ],
    )
    async def test_invalid_tags_name_the_field_and_rule(self, tags: object, rule: str) -> None:
        """Too many, empty, too long, non-list and non-string tags are refused."""
        error = await rejected(tags=tags)
        assert error.field == "tags"
        assert rule in error.message


@pytest.mark.anyio
class TestModeModelOwner:
    """mode is plan or direct; model and owner are non-empty names."""

    @pytest.mark.parametrize("mode", ["plan", "direct"])
    async def test_both_modes_are_accepted(self, mode: str) -> None:
        """plan and direct are the two modes."""
        assert (await accepted(mode=mode)).mode == mode

    @pytest.mark.parametrize("mode", ["PLAN", "", "auto", None, 1])
    async def test_other_modes_are_refused(self, mode: object) -> None:
        """Anything else is refused, naming the allowed values."""
        error = await rejected(mode=mode)
        assert error.field == "mode"
        assert "must be one of plan, direct" in error.message

    async def test_mode_defaults_to_plan(self) -> None:
        """A goal created without a mode is a plan goal."""
        assert (await accepted()).mode == "plan"

    @pytest.mark.parametrize(
        ("model", "rule"), [("", "must not be empty"), (7, "must be a string")]
    )
    async def test_bad_model_names_are_refused(self, model: object, rule: str) -> None:
        """An empty or non-string model is refused naming model."""
        error = await rejected(model=model)
        assert error.field == "model"
        assert rule in error.message

    @pytest.mark.parametrize(("owner", "rule"), [(" ", "must not be empty"), (None, "string")])
    async def test_bad_owners_are_refused(self, owner: object, rule: str) -> None:
        """An empty or non-string owner is refused naming owner."""
        error = await rejected(owner=owner)
        assert error.field == "owner"
        assert rule in error.message


class TestBlank:
    """`BLANK` is exactly the union of Python's and JavaScript's (ECMA regex) whitespace."""

    def test_union_of_python_and_ecma_whitespace(self) -> None:
        """Every character either language strips is in BLANK, and nothing else is."""
        import jsonschema_rs

        not_blank = jsonschema_rs.validator_for({"type": "string", "pattern": r"\S"})
        candidates = [chr(c) for c in range(0x3100)] + ["\ufeff"]  # all whitespace is below
        ecma = {c for c in candidates if not not_blank.is_valid(c)}
        python = {chr(c) for c in range(0x110000) if chr(c).isspace()}
        assert set(BLANK) == ecma | python
        assert len(BLANK) == len(set(BLANK))


@pytest.mark.anyio
class TestIdempotencyKey:
    """An idempotency key is 1–255 printable ASCII characters, no space at either end."""

    @pytest.mark.parametrize("key", ["k", "order-1 b", "x" * 255, "!~"])
    async def test_valid_keys(self, key: str) -> None:
        """Printable ASCII keys, inner spaces included, are accepted."""
        async with manager_for(QueueProvider()) as manager:
            first = await manager.create("valid", idempotency_key=key)
            assert (await manager.create("valid", idempotency_key=key)).id == first.id

    @pytest.mark.parametrize("key", ["", " padded", "padded ", "x" * 256, "tab\there", "clé", 5])
    async def test_invalid_keys_name_the_field(self, key: object) -> None:
        """Empty, padded, too long, control, non-ASCII and non-string keys are refused."""
        error = await rejected(idempotency_key=key)
        assert error.field == "idempotency_key"
        assert "printable ASCII" in error.message


# -- the property: any input is either refused cleanly or stored faithfully ---------------------


class Blocker:
    """A provider plugin whose one step never ends, so it holds the manager's only slot."""

    def __init__(self) -> None:
        self.running: anyio.Event | None = None

    @goalkit.hookimpl
    def goalkit_model_provider(self, model: str) -> Blocker | None:
        return self if model == "blocker" else None

    async def plan(self, goal: Goal, max_steps: int) -> list[str]:
        return ["hold"]

    async def run_step(self, goal: Goal, step: Step, previous: Sequence[Step]) -> str:
        assert self.running is not None
        self.running.set()
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover


@pytest.fixture
def portal_manager() -> Iterator[tuple[anyio.from_thread.BlockingPortal, GoalManager]]:
    """One manager for a whole property test, run in an event loop thread.

    Its only slot is held by a goal that never ends, so every goal the property creates
    stays exactly as `create` stored it and can be compared field by field.
    """
    blocker = Blocker()
    manager = manager_for(blocker, QueueProvider("fake"), max_concurrent=1)
    with anyio.from_thread.start_blocking_portal() as portal:
        blocker.running = portal.call(anyio.Event)
        with portal.wrap_async_context_manager(manager):
            portal.call(lambda: manager.create("hold the slot", model="blocker"))
            portal.call(blocker.running.wait)
            yield portal, manager


def texts() -> st.SearchStrategy[object]:
    return st.one_of(
        st.text(max_size=30),
        st.sampled_from(["", " ", "\n\t", "ok", "  padded  "]),
        st.builds(lambda n, c: c * n, st.integers(9_995, 10_005), st.sampled_from(["a", " "])),
        st.none(),
        st.integers(),
        st.binary(max_size=5),
    )


def numbers() -> st.SearchStrategy[object]:
    return st.one_of(
        st.integers(-5, 110),
        st.integers(),
        st.booleans(),
        st.floats(allow_nan=True),
        st.none(),
        st.text(max_size=3),
    )


def tag_lists() -> st.SearchStrategy[object]:
    item = st.one_of(st.text(max_size=70), st.sampled_from(["", " ", "x" * 64, "x" * 65]))
    return st.one_of(
        st.lists(item, max_size=25),
        st.lists(st.sampled_from([f"t{i}" for i in range(22)]), max_size=40),
        st.lists(st.one_of(item, st.integers(), st.none()), max_size=4),
        st.text(max_size=5),
        st.integers(),
        st.none(),
    )


def mostly(valid: st.SearchStrategy[object], invalid: st.SearchStrategy[object]) -> Any:
    """Valid values three times as often as arbitrary ones, so both outcomes get exercised."""
    return st.integers(0, 3).flatmap(lambda pick: invalid if pick == 0 else valid)


creation_fields = st.fixed_dictionaries(
    {"description": mostly(st.text(min_size=1, max_size=40), texts())},
    optional={
        "model": mostly(st.sampled_from(["fake", " fake ", "blocker", None]), texts()),
        "mode": mostly(st.sampled_from(["plan", "direct"]), texts()),
        "max_steps": mostly(st.integers(1, 100), numbers()),
        "max_retries": mostly(st.integers(0, 10), numbers()),
        "tags": mostly(st.lists(st.text(min_size=1, max_size=64), max_size=22), tag_lists()),
        "owner": mostly(st.sampled_from(["alice", " bob ", "carol"]), texts()),
    },
)


class TestCreationProperty:
    """Whatever a caller passes, create either refuses it naming a field or stores it intact."""

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(fields=creation_fields)
    def test_create_refuses_cleanly_or_stores_faithfully(
        self,
        portal_manager: tuple[anyio.from_thread.BlockingPortal, GoalManager],
        fields: dict[str, Any],
    ) -> None:
        """InvalidGoal with a creation field, or a goal that reads back equal; nothing else."""
        portal, manager = portal_manager
        before = portal.call(lambda: manager.list(limit=1)).total
        try:
            goal = portal.call(lambda: manager.create(**fields))
        except InvalidGoal as error:
            assert error.field in CREATION_FIELDS
            assert error.message.startswith(f"{error.field}: ")
            assert portal.call(lambda: manager.list(limit=1)).total == before
            event(f"refused: {error.field}")
            return
        event("stored")
        assert portal.call(lambda: manager.list(limit=1)).total == before + 1
        assert portal.call(manager.get, goal.id) == goal
        assert [g.id for g in portal.call(manager.by_workflow, goal.workflow_id)] == [goal.id]
        # What was stored obeys every rule, whatever was passed in.
        assert isinstance(fields["description"], str)
        assert goal.description == fields["description"].strip(BLANK)
        assert 1 <= len(goal.description) <= 10_000
        model = fields.get("model")
        assert goal.model == ("fake" if model is None else model.strip(BLANK))
        assert goal.mode in ("plan", "direct")
        assert type(goal.max_steps) is int and 1 <= goal.max_steps <= 100
        assert type(goal.max_retries) is int and 0 <= goal.max_retries <= 10
        assert len(goal.tags) <= 20 and len(set(goal.tags)) == len(goal.tags)
        assert all(isinstance(t, str) and 1 <= len(t) <= 64 for t in goal.tags)
        assert goal.owner and goal.owner == goal.owner.strip(BLANK)
        assert (goal.status, goal.phase, goal.last_event_id) == ("active", "created", 1)
