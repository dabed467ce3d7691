"""Regression gate for kernel sweep results: `python -m mathforge.bench.compare OLD.json NEW.json
--max-regression 5%`. Rows of the two `mathforge.bench.kernels` JSON files are matched on
(op, mode, provider, shape, dtype); a row regresses when its new median time exceeds the old one by more
than the threshold. Prints every matched row and exits 1 when any regressed (2 on unreadable input)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError, DataError

Key = tuple[str, str, str, str, str]


def parse_threshold(text: str) -> float:
    """'5%' → 0.05, '0.05' → 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"--max-regression: expected e.g. '5%' or '0.05', got {text!r}") from None
    if value < 0:
        raise ConfigError(f"--max-regression must be ≥ 0, got {text!r}")
    return value


def load_rows(path: Path) -> dict[Key, dict[str, Any]]:
    """Timed rows of a results file keyed by (op, mode, provider, shape, dtype)."""
    try:
        payload = json.loads(Path(path).read_text())
        rows = payload["rows"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a kernels benchmark result ({type(error).__name__}: {error})") from None
    out = {}
    for row in rows:
        if "median_ms" not in row:
            continue
        shape = ",".join(f"{k}={v}" for k, v in row["shape"].items())
        out[(row["op"], row["mode"], row["provider"], shape, row["dtype"])] = row
    return out


def compare(old: dict[Key, dict], new: dict[Key, dict], max_regression: float, modes=("forward", "full")) -> list[dict]:
    """One entry per row present in both, with the ratio new/old and whether it regressed."""
    out = []
    for key in sorted(old.keys() & new.keys()):
        if key[1] not in modes:
            continue
        before, after = old[key]["median_ms"], new[key]["median_ms"]
        ratio = after / before if before > 0 else float("inf")
        out.append(
            {"key": key, "old_ms": before, "new_ms": after, "ratio": ratio, "regressed": ratio > 1 + max_regression}
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathforge.bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--max-regression", default="5%", help="allowed slow-down of the median, e.g. 5%% (default)")
    parser.add_argument("--provider", action="append", help="only these providers (default: all; repeatable)")
    parser.add_argument("--modes", nargs="+", default=["forward", "full"], choices=["forward", "backward", "full"])
    args = parser.parse_args(argv)
    try:
        threshold = parse_threshold(args.max_regression)
        old, new = load_rows(args.old), load_rows(args.new)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.provider:
        old = {k: v for k, v in old.items() if k[2] in args.provider}
    results = compare(old, new, threshold, tuple(args.modes))
    for r in results:
        op, mode, provider, shape, dtype = r["key"]
        flag = "REGRESSION" if r["regressed"] else "ok"
        print(
            f"{flag:10} {r['ratio']:6.3f}x  {r['old_ms']:10.4f} → {r['new_ms']:10.4f} ms  {op} {mode} {provider} {shape} {dtype}"
        )
    only_old = len(old.keys() - new.keys())
    regressed = sum(r["regressed"] for r in results)
    print(
        f"{len(results)} compared, {regressed} regressed (> {threshold:.1%}), {only_old} rows missing from {args.new}"
    )
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
