"""Shared by the peer-case runners (tests/test_kernels_peer_cases*.py): the counts of a set of ported cases and
the counts table that tests/cases/peers/README.md gives for them."""

from __future__ import annotations

import re
from pathlib import Path

PEERS = Path(__file__).parent / "cases" / "peers"
COUNT_KEYS = ("cases", "unsupported", "gpu_only", "cpu", "derived")


def case_counts(cases: list[dict]) -> dict[str, int]:
    """Cases, unsupported, GPU-only (supported), CPU-run (supported, not GPU-only), derived (ours, from a peer's)."""
    supported = [c for c in cases if not c["unsupported"]]
    return {
        "cases": len(cases),
        "unsupported": len(cases) - len(supported),
        "gpu_only": sum(c["gpu_only"] for c in supported),
        "cpu": sum(not c["gpu_only"] for c in supported),
        "derived": sum(bool(c.get("derived_from")) for c in cases),
    }


def readme_counts(row_name: str) -> dict[str, dict[str, int]]:
    """The README's counts rows `| NAME | n | n | n | n | n |` whose NAME matches the regex `row_name` (one group:
    the key), as {key: {COUNT_KEYS: n}}."""
    pattern = rf"^\|\s*{row_name}\s*\|((?:\s*\d+\s*\|){{5}})\s*$"
    rows = re.findall(pattern, (PEERS / "README.md").read_text(), re.M)
    return {name: dict(zip(COUNT_KEYS, map(int, re.findall(r"\d+", cells)))) for name, cells in rows}
