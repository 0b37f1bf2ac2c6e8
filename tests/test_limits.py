"""Per-user resource caps: active goals per owner (any caller) and event streams (HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from asgi_helpers import ALICE, BOB, HeldProvider, Users, client

import goalkit.asgi
from goalkit import GoalkitError, GoalManager, LimitExceeded
from goalkit.cli import _parser

pytestmark = pytest.mark.anyio


def capped(provider: HeldProvider, url: str = "memory://", **options: Any) -> GoalManager:
    return GoalManager(
        url, plugins=[Users(), provider], entry_points=False, retry_backoff=0, **options
    )


class TestActiveGoalCap:
    """`max_active_per_owner` refuses a creation past the cap, per owner, until one ends."""

    async def test_the_cap_is_per_owner_and_frees_up(self) -> None:
        provider = HeldProvider()
        async with capped(provider, max_active_per_owner=2) as manager:
            first = await manager.create("a", model="held", owner="alice")
            await manager.create("b", model="held", owner="alice")
            with pytest.raises(LimitExceeded) as refused:
                await manager.create("c", model="held", owner="alice")
            assert isinstance(refused.value, GoalkitError)
            assert refused.value.status == 429
            assert refused.value.code == "limit_exceeded"
            assert refused.value.retry_after == 10
            assert "'alice' has 2 active goals" in refused.value.message
            assert "max_active_per_owner=2" in refused.value.message
            # Nothing was stored for the refused request.
            assert (await manager.list(owner="alice")).total == 2
            await manager.create("d", model="held", owner="bob")  # counted apart
            await manager.cancel(first.id)  # an ended goal no longer counts
            await manager.create("e", model="held", owner="alice")
            for goal in (await manager.list(status="active")).items:
                provider.release(goal.id)

    async def test_concurrent_creations_stop_exactly_at_the_cap(self, tmp_path: Path) -> None:
        provider = HeldProvider()
        url = f"sqlite:///{tmp_path / 'g.db'}"
        async with capped(provider, url, max_active_per_owner=3) as manager:
            outcomes: list[str] = []

            async def create() -> None:
                try:
                    await manager.create("x", model="held", owner="alice")
                    outcomes.append("created")
                except LimitExceeded:
                    outcomes.append("refused")

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(create)
            assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 7
            assert (await manager.list(owner="alice", status="active")).total == 3
            for goal in (await manager.list(status="active")).items:
                provider.release(goal.id)

    async def test_none_means_no_cap(self) -> None:
        provider = HeldProvider()
        async with capped(provider, max_active_per_owner=None) as manager:
            for _ in range(105):
                await manager.create("x", model="held", owner="alice")
            assert (await manager.list(status="active")).total == 105
            assert manager.max_active_per_owner is None
            for goal in (await manager.list(status="active", limit=500)).items:
                provider.release(goal.id)

    def test_the_defaults(self) -> None:
        # A library user's batch job is not capped; the multi-user server is, at 100.
        assert GoalManager("memory://", entry_points=False).max_active_per_owner is None
        assert _parser().parse_args(["serve"]).max_active_goals == 100

    @pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
    def test_a_bad_cap_is_refused(self, value: Any) -> None:
        with pytest.raises(ValueError, match="max_active_per_owner"):
            GoalManager("memory://", entry_points=False, max_active_per_owner=value)

    async def test_over_http_it_is_a_429_with_retry_after(self) -> None:
        provider = HeldProvider()
        manager = capped(provider, max_active_per_owner=1)
        async with manager, client(goalkit.asgi.create_app(manager)) as http:
            body = {"description": "x", "model": "held"}
            created = await http.post("/api/v1/goals", json=body, headers=ALICE)
            assert created.status_code == 201
            refused = await http.post("/api/v1/goals", json=body, headers=ALICE)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "10"
            assert refused.json()["ok"] is False
            assert refused.json()["error"]["code"] == "limit_exceeded"
            assert "max_active_per_owner=1" in refused.json()["error"]["message"]
            assert (await http.post("/api/v1/goals", json=body, headers=BOB)).status_code == 201
            for goal in (await manager.list(status="active")).items:
                provider.release(goal.id)
