"""Streaming finalize: the same kept rows, removal records and counts as the in-memory filters applied in turn;
the C++ LSH + union-find against a pure-Python reference; natural id order; Parquet written in row groups."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mathforge.evaluate import datasets
from mathforge.synth import quality, stream
from mathforge.synth.store import Journal, RowSink, _flat_meta

# ---------------------------------------------------------------- LSH + union-find


def reference_roots(sig: np.ndarray, rows: list[int], bands: int, threshold: float) -> list[int]:
    """Pure Python: buckets of equal band values, each member joined to the bucket's earliest one when the share
    of equal values is >= threshold; connected components rooted at their earliest position."""
    m, width = len(rows), sig.shape[1] // bands
    edges: dict[int, set[int]] = {i: set() for i in range(m)}
    for b in range(bands):
        buckets: dict[tuple, list[int]] = {}
        for pos, r in enumerate(rows):
            buckets.setdefault(tuple(sig[r, b * width : (b + 1) * width].tolist()), []).append(pos)
        for members in buckets.values():
            head = members[0]
            for pos in members[1:]:
                if (sig[rows[pos]] == sig[rows[head]]).mean() >= threshold:
                    edges[pos].add(head)
                    edges[head].add(pos)
    roots = [-1] * m
    for start in range(m):  # positions in increasing order: the first to reach a component is its root
        if roots[start] >= 0:
            continue
        stack = [start]
        roots[start] = start
        while stack:
            for nxt in edges[stack.pop()]:
                if roots[nxt] < 0:
                    roots[nxt] = start
                    stack.append(nxt)
    return roots


def planted_signatures(seed: int, n: int = 400, num_perm: int = 32) -> np.ndarray:
    """Random signatures over a small alphabet (so unrelated rows share bands by chance), plus copies edited in a
    few values and chains a→b→c where a and c are too far apart to be joined directly."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 3, size=(n, num_perm), dtype=np.uint32)
    for i in range(0, n - 3, 7):
        base = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint32)
        step = np.array(rng.permutation(num_perm)[: num_perm // 4])
        sig[i] = base
        sig[i + 1] = base
        sig[i + 1, step[: len(step) // 2]] += 1  # a chain: i ~ i+1 ~ i+2, i and i+2 differ in a quarter
        sig[i + 2] = sig[i + 1]
        sig[i + 2, step[len(step) // 2 :]] += 1
    return sig


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_lsh_union_find_equals_python_reference(seed):
    sig = planted_signatures(seed)
    rows = np.random.default_rng(seed).permutation(len(sig))[:350].astype(np.int64)  # a subset, in another order
    for bands, threshold in ((8, 0.8), (16, 0.7), (4, 0.5)):
        got = quality.near_duplicate_roots(sig, rows, bands=bands, threshold=threshold)
        assert got.tolist() == reference_roots(sig, rows.tolist(), bands, threshold)


def test_chains_need_union_find_transitivity():
    base = np.arange(16, dtype=np.uint32)
    a, b, c = base.copy(), base.copy(), base.copy()
    b[:4] += 100  # a~b: 12/16 equal
    c[:8] += 100  # b~c: 12/16; a~c: 8/16
    sig = np.stack([c, a, b])  # c first: c is the root of all three only through b
    roots = quality.near_duplicate_roots(sig, bands=4, threshold=0.7)
    assert roots.tolist() == [0, 0, 0]
    assert quality.near_duplicate_roots(sig[:2], bands=4, threshold=0.7).tolist() == [0, 1]


def test_near_dedup_signatures_are_32_bit_minhash():
    sig = quality.minhash(["a b c d e f g", "a b c d e f g", ""], ngram=2, num_perm=64)
    assert sig.dtype == np.uint32 and sig.shape == (3, 64)
    assert (sig[0] == sig[1]).all() and (sig[2] == 0xFFFFFFFF).all()


# ---------------------------------------------------------------- natural order


def old_natural(text: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def test_natural_key_sorts_like_the_list_key():
    rng = random.Random(0)
    parts = ["item-", "a", "b-", "", "x\x00", "sym-0-normal-", "é", "-", "z"]
    ids = [
        "".join(rng.choice(parts) + str(rng.choice([0, 7, 9, 10, 99, 100, 7])) for _ in range(rng.randint(1, 3)))
        for _ in range(500)
    ]
    ids += ["item-9", "item-10", "item-009", "a", "a1", "a1b", "a1b2", "b"]
    assert sorted(ids, key=stream.natural_key) == sorted(ids, key=old_natural)


# ---------------------------------------------------------------- streaming == in-memory


def make_journals(folder: Path) -> tuple[list[Path], list[str]]:
    """Three shard journals in completion order (shuffled), with rejected items, short rows, exact and near
    duplicates across shards, planted test problems, two stages, two rows for some items, a repeated line."""
    gsm = [r["question"] for r in datasets.load("gsm8k", "train")[:120]]
    test_q = [r["question"] for r in datasets.load("gsm8k", "test") if len(r["question"].split()) >= 30][:3]
    rng = random.Random(1)
    records = []
    for k in range(160):
        rid = f"it-{k}"
        if k % 23 == 5:
            records.append({"id": rid, "status": "rejected", "reason": "no answer", "kind": "cot: parse", "rows": []})
            continue
        prompt = gsm[k % 120]
        if k >= 120 and k % 3 == 0:
            prompt = gsm[k % 120].upper() + " !"  # exact duplicate of an earlier item after normalisation
        elif k >= 120 and k % 3 == 1:
            prompt = gsm[k % 120].replace(" a ", " one ", 1) + " Explain briefly."  # near duplicate
        elif k % 31 == 0:
            prompt = "Short?"  # length
        elif k % 37 == 3:
            prompt = "Please solve: " + test_q[k % 3]  # contaminated
        stage = "hard" if k % 4 == 0 else "normal"
        rows = [{"prompt": prompt, "response": f"Work {k}. The answer is: {k}", "meta": {"id": rid, "stage": stage}}]
        if k % 11 == 0:
            rows.append(
                {"prompt": prompt + " (again)", "response": "Other work. The answer is: 1", "meta": {"id": rid}}
            )
        records.append({"id": rid, "status": "ok", "rows": rows})
    paths = []
    for shard in range(3):
        mine = [r for i, r in enumerate(records) if i % 3 == shard]
        rng.shuffle(mine)
        path = folder / f"journal-{shard}.jsonl"
        with open(path, "w") as handle:
            for r in [*mine, mine[0]]:  # the repeated line is ignored, as Journal.records ignores it
                handle.write(json.dumps(r) + "\n")
        paths.append(path)
    return paths, test_q


def in_memory(plan: stream.Plan, journals: list[Path]) -> tuple[list[dict], list[dict], dict]:
    """The filters applied as finalize did before streaming: all records sorted, each filter over the whole list."""
    records = [rec for p in journals for rec in Journal(p).records()]
    rows, removed, counts = [], [], {}
    failed = 0
    for rec in sorted(records, key=lambda r: old_natural(r["id"])):
        rows.extend(rec["rows"])
        if rec["status"] != "ok":
            failed += 1
            removed.append({"filter": "generation", "id": rec["id"], "reason": rec.get("reason")})
    counts["generation"] = {"in": len(records), "removed": failed, "kept": len(rows)}
    b = plan.lengths
    steps = [("length", lambda r: quality.length_filter(r, **b.__dict__))]
    steps.append(("exact_dedup", lambda r: quality.exact_dedup(r, plan.exact_fields)))
    near = plan.near
    steps.append(
        (
            "near_dedup",
            lambda r: quality.near_dedup(
                r,
                fields=near.fields,
                ngram=near.ngram,
                num_perm=near.num_perm,
                bands=near.bands,
                threshold=near.threshold,
            ),
        )
    )
    steps.append(("decontamination", lambda r: plan.decontaminator.filter(r, plan.decontamination_fields)))
    for name, fn in steps:
        seen = len(rows)
        rows, out = fn(rows)
        counts[name] = {"in": seen, "removed": len(out), "kept": len(rows)}
        removed.extend({"filter": name, **r} for r in out)
    return rows, removed, counts


def test_streaming_finalize_equals_the_in_memory_filters(tmp_path):
    journals, test_q = make_journals(tmp_path)
    plan = stream.Plan(
        lengths=quality.LengthBounds(10, 4000, 10, 16000),
        exact_fields=("prompt",),
        near=stream.NearDedup(("prompt",), ngram=3, num_perm=128, bands=16, threshold=0.6),
        decontaminator=quality.Decontaminator(13, (), extra={"gsm8k_test": test_q}),
    )
    rows, removed, counts = in_memory(plan, journals)
    assert all(counts[f]["removed"] > 0 for f in counts)  # every filter removes something here
    out = tmp_path / "run"
    result = stream.finalize(plan, journals, out, "merged", "merged", "jsonl")
    assert result["filters"] == counts
    written = [json.loads(line) for line in (out / "removed-merged.jsonl").read_text().splitlines()]
    assert written == removed
    for stage in ("hard", "normal"):
        path = out / "merged" / stage / "shard-merged.jsonl"
        got = [json.loads(line) for line in path.read_text().splitlines()]
        assert got == [r for r in rows if str(r["meta"].get("stage", "all")) == stage]
        assert result["files"][stage] == {"path": str(path), "rows": len(got)}
    assert result["generation_rejections"] == {"cot: parse": counts["generation"]["removed"]}
    assert not list((out / "work").iterdir())  # spills and signatures cleaned up


def test_row_sink_parquet_batches_read_back_like_one_table(tmp_path):
    rows = [{"prompt": f"p{i}", "response": "r", "meta": {"id": f"i{i}", "seed_id": None, "n": i}} for i in range(10)]
    rows[7]["meta"]["seed_id"] = "s7"  # null so far: cast
    rows[8]["meta"]["extra"] = [1, 2]  # a new meta key: the file is rewritten under the unified schema
    rows[9]["meta"]["n"] = 2.5  # int so far: promoted
    sink = RowSink(tmp_path / "x.parquet", "parquet", batch_rows=3)
    for r in rows:
        sink.add(r)
    sink.close()
    got = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert got == pa.Table.from_pylist([_flat_meta(r) for r in rows]).to_pylist()
    assert sink.rows == 10 and not (tmp_path / "x.parquet.tmp").exists()
