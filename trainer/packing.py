"""Sequence packing: best-fit-decreasing of item lengths into bins of `max_tokens` tokens.

The bin assignment runs in the compiled `mathforge._native` extension (O(n log n), deterministic);
this module validates input and applies the policy for items longer than a bin:

- ``"error"``: raise `PackingError` naming the first such items and their lengths;
- ``"drop"``: leave them out; `Packing.dropped` lists them and a warning gives the count;
- ``"split"``: cut them into pieces of `max_tokens` (and a remainder) packed like any item;
  `Packing.offsets` says where each piece starts inside its item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mathforge import _native
from mathforge.errors import PackingError

Policy = Literal["error", "drop", "split"]
POLICIES = ("error", "drop", "split")
MAX_TOKENS_LIMIT = 1 << 26  # the packer keeps O(max_tokens) buckets; the C++ side checks the same bound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packing:
    """A packing in CSR form: bin b holds entries ``starts[b]:starts[b+1]``.

    Each entry is a whole item, or a piece of one under policy="split"; entries are in placement
    order (longest first) within a bin, bins in creation order.
    """

    items: np.ndarray  # [entries] int64: the item index of each entry
    starts: np.ndarray  # [bins + 1] int64: CSR offsets into items
    lengths: np.ndarray  # [entries] int64: tokens in each entry
    offsets: np.ndarray  # [entries] int64: first token of the entry inside its item (0 unless split)
    dropped: np.ndarray  # int64: items left out under policy="drop"
    max_tokens: int

    @property
    def num_bins(self) -> int:
        return len(self.starts) - 1

    def bins(self) -> list[np.ndarray]:
        """Each bin's item indices."""
        starts = self.starts.tolist()
        return [self.items[begin:end] for begin, end in zip(starts[:-1], starts[1:])]

    def bin_tokens(self) -> np.ndarray:
        """Tokens in each bin."""
        cumulative = np.concatenate(([0], np.cumsum(self.lengths)))
        return cumulative[self.starts[1:]] - cumulative[self.starts[:-1]]

    @property
    def fill_ratio(self) -> float:
        """Packed tokens / (bins x max_tokens); 1.0 for an empty packing."""
        return float(self.lengths.sum()) / (self.num_bins * self.max_tokens) if self.num_bins else 1.0


def _check_lengths(lengths: np.ndarray | list[int], max_tokens: int) -> np.ndarray:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens <= 0:
        raise PackingError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if max_tokens > MAX_TOKENS_LIMIT:
        raise PackingError(f"max_tokens={max_tokens} exceeds the packer's limit of {MAX_TOKENS_LIMIT}")
    array = np.asarray(lengths)
    if array.ndim != 1:
        raise PackingError(f"lengths must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise PackingError(f"lengths must be integers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise PackingError(f"item {negative[0]} has negative length {array[negative[0]]}")
    return array


def pack_detailed(lengths: np.ndarray | list[int], max_tokens: int, policy: Policy = "error") -> Packing:
    """Packs items of the given token `lengths` into as few bins of `max_tokens` as best-fit-decreasing finds."""
    lengths = _check_lengths(lengths, max_tokens)
    if policy not in POLICIES:
        raise PackingError(f"unknown packing policy {policy!r}; allowed: {', '.join(POLICIES)}")
    too_long = np.flatnonzero(lengths > max_tokens)
    entry_item = None  # entry k is item k unless items are dropped or split
    entry_length, entry_offset = lengths, np.zeros_like(lengths)
    dropped = np.empty(0, dtype=np.int64)

    if too_long.size and policy == "error":
        shown = ", ".join(f"item {i} (length {lengths[i]})" for i in too_long[:5])
        more = f" and {too_long.size - 5} more" if too_long.size > 5 else ""
        raise PackingError(
            f"{too_long.size} item(s) longer than max_tokens={max_tokens}: {shown}{more}; "
            'use policy="drop" or policy="split"'
        )
    if too_long.size and policy == "drop":
        dropped = too_long
        keep = lengths <= max_tokens
        entry_item, entry_length, entry_offset = np.flatnonzero(keep), lengths[keep], entry_offset[keep]
        log.warning("packing dropped %d item(s) longer than max_tokens=%d", too_long.size, max_tokens)
    if too_long.size and policy == "split":
        pieces = np.maximum(1, -(-lengths // max_tokens))  # ceil, an empty item stays one entry
        entry_item = np.repeat(np.arange(len(lengths), dtype=np.int64), pieces)
        first_entry = np.repeat(np.cumsum(pieces) - pieces, pieces)
        entry_offset = (np.arange(len(entry_item)) - first_entry) * max_tokens
        entry_length = np.minimum(lengths[entry_item] - entry_offset, max_tokens)

    order, starts = _native.best_fit_decreasing(entry_length, int(max_tokens))
    return Packing(
        items=order if entry_item is None else entry_item[order],
        starts=starts,
        lengths=entry_length[order],
        offsets=entry_offset[order],
        dropped=dropped,
        max_tokens=int(max_tokens),
    )


def pack(lengths: np.ndarray | list[int], max_tokens: int, policy: Policy = "error") -> list[np.ndarray]:
    """Best-fit-decreasing packing; returns each bin's item indices (see `pack_detailed` for pieces and drops)."""
    return pack_detailed(lengths, max_tokens, policy).bins()


def fill_ratio(bins: list[np.ndarray], lengths: np.ndarray | list[int], max_tokens: int) -> float:
    """Packed tokens / (bins x max_tokens) for bins of whole items as returned by `pack`."""
    if not bins:
        return 1.0
    lengths = np.asarray(lengths, dtype=np.int64)
    return float(lengths[np.concatenate(bins)].sum()) / (len(bins) * max_tokens)
