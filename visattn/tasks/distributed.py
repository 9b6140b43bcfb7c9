"""Gathering an evaluation split's per-process shares under DDP.

Validation and test give process ``r`` of ``W`` the samples ``r, r + W, r + 2W, ...`` of the split, without
repeats (Lightning's ``UnrepeatedDistributedSampler``, no shuffling), so the shares may differ in length by one.
"""
from typing import Any, Optional, Sequence


def gather_shares(share: Any, group: Optional[Any] = None) -> list[Any]:
    """Every process's ``share`` (any picklable object), in rank order. A collective: every process calls it."""
    import torch.distributed

    shares: list[Any] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(shares, share, group=group)
    return shares


def in_split_order(shares: Sequence[Sequence[Any]]) -> list[Any]:
    """The samples of per-process ``shares`` (lists in rank order) back in the split's order."""
    longest = max(map(len, shares), default=0)
    return [share[i] for i in range(longest) for share in shares if i < len(share)]
