"""Which samples share a batched DiT forward: one rule for the pipeline, the runner and cost estimates.

Samples can share a forward only when their sampling key is equal (size, step count, refiner mode; see
``request.sampling_group``); a batch holds at most ``max_batch_size`` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from llm_dit.errors import LlmDitError

Item = TypeVar("Item")


def batches(items: Iterable[Item], key: Callable[[Item], Hashable], max_batch_size: int) -> list[list[Item]]:
    """``items`` grouped by ``key``, each group cut into consecutive chunks of at most ``max_batch_size``.

    Groups come in the order of their key's first item, and items keep their order within a group, so the same
    plan always gives the same batches (and the same pixels: a batch's members are sampled together). Items of
    distinct keys never share a batch.
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise LlmDitError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [
        group[start : start + max_batch_size]
        for group in groups.values()
        for start in range(0, len(group), max_batch_size)
    ]
