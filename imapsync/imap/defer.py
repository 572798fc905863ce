# -*- test-case-name: tests.test_engine -*-
"""Waiting for several Deferreds or coroutines at once."""

from __future__ import annotations

from typing import Awaitable, List, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

T = TypeVar("T")


def _first_error(failure: Failure) -> Failure:
    inner = getattr(failure.value, "subFailure", None)
    return inner if isinstance(inner, Failure) else failure


async def gather(*awaitables: Awaitable[T]) -> List[T]:
    """Run concurrently; fail with the first error (not a FirstError wrapper)."""
    deferreds = [
        a if isinstance(a, Deferred) else Deferred.fromCoroutine(a)  # type: ignore[arg-type]
        for a in awaitables
    ]
    d: Deferred[List[T]] = gatherResults(deferreds, consumeErrors=True)
    d.addErrback(_first_error)
    return await d
