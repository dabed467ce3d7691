"""The compiled best-fit-decreasing packer against a pure-numpy reference with the same tie rules."""

import numpy as np
import pytest

from mathforge.errors import PackingError
from mathforge.trainer.packing import fill_ratio, pack, pack_detailed


def reference_bfd(lengths, max_tokens):
    """O(n x bins) best-fit-decreasing: longest first (ties: lower index); the fitting bin with the least
    room left (ties: the bin that reached that room most recently); else a new bin."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    room, stamp, bins = [], [], []
    for step, item in enumerate(order):
        fits = [b for b in range(len(room)) if room[b] >= lengths[item]]
        if fits:
            b = min(fits, key=lambda b: (room[b], -stamp[b]))
        else:
            b = len(room)
            room.append(max_tokens)
            stamp.append(-1)
            bins.append([])
        room[b] -= lengths[item]
        stamp[b] = step
        bins[b].append(item)
    return [np.array(b, dtype=np.int64) for b in bins]


def assert_valid(bins, lengths, max_tokens, expected_items):
    flat = np.concatenate(bins) if bins else np.empty(0, dtype=np.int64)
    assert sorted(flat.tolist()) == sorted(expected_items)  # every index exactly once
    for b in bins:
        assert len(b) > 0
        assert np.asarray(lengths)[b].sum() <= max_tokens


def same(bins_a, bins_b):
    return len(bins_a) == len(bins_b) and all(np.array_equal(a, b) for a, b in zip(bins_a, bins_b))


@pytest.mark.parametrize("seed", range(12))
def test_random_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    max_tokens = int(rng.choice([1, 7, 64, 100, 4096]))
    lengths = rng.integers(0, max_tokens + 1, n)
    bins = pack(lengths, max_tokens)
    assert same(bins, reference_bfd(lengths, max_tokens))
    assert_valid(bins, lengths, max_tokens, list(range(n)))


def test_sft_like_lengths_match_reference_and_fill_well():
    rng = np.random.default_rng(7)
    lengths = np.clip(np.round(rng.lognormal(np.log(350), 0.9, 3000)), 16, 4096).astype(np.int64)
    bins = pack(lengths, 4096)
    assert same(bins, reference_bfd(lengths, 4096))
    assert len(bins) >= -(-lengths.sum() // 4096)  # never below the volume bound
    assert fill_ratio(bins, lengths, 4096) > 0.99


@pytest.mark.parametrize(
    "lengths, max_tokens, expected",
    [
        ([], 8, []),
        ([5], 8, [[0]]),
        ([8], 8, [[0]]),
        ([4, 4, 4, 4, 4], 8, [[0, 1], [2, 3], [4]]),
        ([8, 8, 8], 8, [[0], [1], [2]]),
        ([0, 0], 8, [[0, 1]]),
        ([5, 3, 2, 4, 1], 6, [[0, 4], [3, 2], [1]]),
        # best fit, not first fit: the 2 goes to the bin with room 2 (second), not room 3 (first)
        ([7, 8, 2], 10, [[1, 2], [0]]),
    ],
)
def test_edge_cases(lengths, max_tokens, expected):
    bins = pack(lengths, max_tokens)
    assert [b.tolist() for b in bins] == expected
    assert same(bins, reference_bfd(lengths, max_tokens))


def test_deterministic():
    lengths = np.random.default_rng(3).integers(1, 500, 10_000)
    assert same(pack(lengths, 512), pack(lengths.copy(), 512))


def test_too_long_error_names_the_item():
    with pytest.raises(PackingError, match=r"item 2 \(length 9\)"):
        pack([3, 4, 9, 1], 8)


def test_too_long_drop_counts_and_reports(caplog):
    packing = pack_detailed([3, 9, 4, 12, 1], 8, policy="drop")
    assert packing.dropped.tolist() == [1, 3]
    assert "dropped 2 item(s)" in caplog.text
    assert_valid(packing.bins(), [3, 9, 4, 12, 1], 8, [0, 2, 4])
    bins = pack([3, 9, 4, 12, 1], 8, policy="drop")
    assert [b.tolist() for b in bins] == [[2, 0, 4]]


def test_too_long_split_covers_every_token_once():
    lengths = np.array([10, 3, 0, 17, 8])
    packing = pack_detailed(lengths, 8, policy="split")
    assert (packing.bin_tokens() <= 8).all()
    for item, length in enumerate(lengths):
        mine = packing.items == item
        pieces = sorted(zip(packing.offsets[mine].tolist(), packing.lengths[mine].tolist()))
        covered = 0
        for offset, piece in pieces:
            assert offset == covered
            covered += piece
        assert covered == length
    assert sorted(set(packing.items.tolist())) == list(range(len(lengths)))
    assert packing.fill_ratio == pytest.approx(lengths.sum() / (packing.num_bins * 8))
    # 10 -> 8+2, 17 -> 8+8+1: three full bins, then 3+2+1+0 and the 8
    assert packing.num_bins == 5


@pytest.mark.parametrize(
    "lengths, max_tokens, message",
    [
        ([1, -2], 8, "item 1 has negative length -2"),
        ([1.5, 2.0], 8, "must be integers"),
        ([[1, 2]], 8, "one-dimensional"),
        ([1], 0, "positive integer"),
        ([1], 1 << 27, "exceeds the packer's limit"),
    ],
)
def test_bad_input(lengths, max_tokens, message):
    with pytest.raises(PackingError, match=message):
        pack(lengths, max_tokens)


def test_unknown_policy():
    with pytest.raises(PackingError, match="allowed: error, drop, split"):
        pack([1, 2], 8, policy="truncate")


def test_fill_ratio():
    assert fill_ratio([np.array([0, 1]), np.array([2])], [3, 5, 4], 8) == pytest.approx(12 / 16)
    assert fill_ratio([], [], 8) == 1.0
