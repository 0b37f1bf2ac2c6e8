"""goalkit: durable, multi-step agent goals.

from goalkit import GoalManager

async with GoalManager("sqlite:///goals.db") as manager:
    goal = await manager.create("Research quantum computing advances in 2026")
    goal = await manager.wait(goal.id)
"""

from goalkit.engine import EventStream
from goalkit.errors import (
    Forbidden,
    GoalConflict,
    GoalkitError,
    GoalNotFound,
    InvalidGoal,
    LeaseLost,
    LimitExceeded,
    NotAuthenticated,
    PluginError,
    ProviderError,
    StorageError,
)
from goalkit.hookspecs import hookimpl, hookspec
from goalkit.manager import GoalManager
from goalkit.models import Answer, ErrorInfo, Event, Goal, Page, Principal, Step, StepSpec, Usage
from goalkit.providers import ModelProvider, StreamingProvider
from goalkit.retry import RetryPolicy
from goalkit.storage import Storage

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "ErrorInfo",
    "Event",
    "EventStream",
    "Forbidden",
    "Goal",
    "GoalConflict",
    "GoalManager",
    "GoalNotFound",
    "GoalkitError",
    "InvalidGoal",
    "LeaseLost",
    "LimitExceeded",
    "ModelProvider",
    "NotAuthenticated",
    "Page",
    "PluginError",
    "Principal",
    "ProviderError",
    "RetryPolicy",
    "Step",
    "StepSpec",
    "Storage",
    "StorageError",
    "StreamingProvider",
    "Usage",
    "hookimpl",
    "hookspec",
]
