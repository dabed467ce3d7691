"""Markdown tables of a `mathforge.bench.kernels` results file, and issue 11's targets judged on it:

    python -m mathforge.bench.kernels_report bench/results/h200/kernels.json [more.json ...]

Prints (1) the run's device, ceilings and versions, (2) per op and shape every provider's forward + backward
median with its p20–p80, achieved rate, % of the measured ceiling, × the matmul floor (fused linear CE), peak
memory and time relative to ours ("mathforge", the public API), and (3) the targets (`TARGETS`): the metric
ours reached, whether it meets the bound, and each named peer's time and peak memory over ours (> 1: we are
faster / leaner). Several files (e.g. the sweep and the FLCE chunk sweep of one session) are read as one run;
their rows must come from one device. A target whose rows are missing says "not measured"; providers that
failed are listed with their error. Exit 0 when the tables were written (whatever the verdicts), 2 on a file
that is not a kernels result.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathforge.errors import DataError

OURS = "mathforge"


@dataclass(frozen=True)
class Target:
    """Ours on `op` at the rows whose shape contains `shape` (bf16, forward + backward): `metric` ≥ `bound`
    ("pct_of_ceiling") or ≤ `bound` ("x_floor"), and faster than each of `faster_than`."""

    op: str
    shape: tuple[tuple[str, int], ...]
    metric: str
    bound: float
    faster_than: tuple[str, ...]

    def label(self) -> str:
        shape = ", ".join(f"{k}={v}" for k, v in self.shape)
        relation = "≥" if self.metric == "pct_of_ceiling" else "≤"
        what = "% of copy bandwidth" if self.metric == "pct_of_ceiling" else "× the 6NHV matmul floor"
        return f"{self.op} [{shape}]: {relation} {self.bound:g}{'' if what[0] == '%' else ' '}{what}"

    def met(self, value: float) -> bool:
        return value >= self.bound if self.metric == "pct_of_ceiling" else value <= self.bound


_N = ("tokens", 16384)
_CE_PEERS = ("liger", "torch.compile")
_FLCE_PEERS = ("liger", "cce", "torch.compile")
TARGETS: tuple[Target, ...] = (  # issue 11, "Then make them fast"
    *(Target("cross_entropy", (_N, ("vocab", v)), "pct_of_ceiling", 85, _CE_PEERS) for v in (32000, 128256, 151936)),
    *(
        Target("fused_linear_cross_entropy", (_N, ("hidden", h), ("vocab", v)), "x_floor", 1.25, _FLCE_PEERS)
        for h, v in ((4096, 128256), (1536, 151936), (3584, 152064))
    ),
    Target("rms_norm", (_N, ("hidden", 4096)), "pct_of_ceiling", 80, ()),
    Target("swiglu", (_N, ("intermediate", 4096)), "pct_of_ceiling", 80, ()),
    Target("apply_rope", (_N, ("q_heads", 32), ("k_heads", 8), ("head_dim", 128)), "pct_of_ceiling", 80, ()),
)


def load(paths: list[Path]) -> dict[str, Any]:
    """The rows of every file (one run), with the first file's environment and ceilings; DataError naming the
    file for one that is not a kernels result or comes from another device."""
    merged: dict[str, Any] = {"rows": []}
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
            rows, env = payload["rows"], payload["environment"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path}: not a kernels benchmark result ({type(error).__name__}: {error})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "op" in r for r in rows):
            raise DataError(f"{path}: 'rows' must be a list of result rows with an 'op'")
        if "environment" in merged and env.get("device") != merged["environment"].get("device"):
            raise DataError(
                f"{path}: device {env.get('device')!r}, not {merged['environment'].get('device')!r} of {paths[0]}"
            )
        merged.setdefault("environment", env)
        merged.setdefault("ceilings", payload.get("ceilings", {}))
        merged["rows"] += rows
    return merged


def _shape_text(shape: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Forward + backward rows by (op, shape, dtype), in first-seen order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("mode") == "full":
            groups.setdefault((row["op"], _shape_text(row["shape"]), row["dtype"]), []).append(row)
    return groups


def _rate(row: dict[str, Any]) -> str:
    if "gbs" in row:
        return f"{row['gbs']:,.0f} GB/s"
    return f"{row['tflops']:.1f} TFLOP/s" if "tflops" in row else ""


def results_table(rows: list[dict[str, Any]]) -> str:
    """One markdown table per (op, shape, dtype): every provider's forward + backward figures."""
    out = []
    head = "| provider | fwd+bwd ms (p20–p80) | rate | % ceiling | × floor | peak MiB | time / ours |\n"
    head += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for (op, shape, dtype), group in _groups(rows).items():
        ours = next((r for r in group if r["provider"] == OURS and "median_ms" in r), None)
        lines = [f"**{op}** [{shape}] {dtype}", "", head]
        for r in group:
            if "median_ms" not in r:
                lines.append(f"| {r['provider']} | failed: {r.get('error', 'no time')} | | | | | |")
                continue
            cells = [
                r["provider"],
                f"{r['median_ms']:.3f} ({r['p20_ms']:.3f}–{r['p80_ms']:.3f})",
                _rate(r),
                f"{r['pct_of_ceiling']:.0f}%" if "pct_of_ceiling" in r else "",
                f"{r['x_floor']:.2f}" if "x_floor" in r else "",
                "" if r.get("peak_mib") is None else f"{r['peak_mib']:,.0f}",
                f"{r['median_ms'] / ours['median_ms']:.2f}×" if ours else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _find(rows: list[dict[str, Any]], target: Target, provider: str) -> dict[str, Any] | None:
    for row in rows:
        if row.get("mode") != "full" or row["op"] != target.op or row["provider"] != provider:
            continue
        if row.get("dtype") == "bfloat16" and all(row["shape"].get(k) == v for k, v in target.shape):
            return row
    return None


def judge(rows: list[dict[str, Any]], target: Target) -> dict[str, Any]:
    """Ours against one target: value, met (the bound and faster than every measured named peer; None when ours
    was not measured), a verdict ("yes", "NO", "so far (not measured: PEERS)", "not measured"), and per named
    peer its time and peak memory over ours (None when that peer has no timed row)."""
    ours = _find(rows, target, OURS)
    if ours is None or target.metric not in ours:
        return {"target": target.label(), "value": None, "met": None, "verdict": "not measured", "peers": {}}
    peers = {}
    for name in target.faster_than:
        peer = _find(rows, target, name)
        timed = peer is not None and "median_ms" in peer
        peers[name] = {
            "time_ratio": peer["median_ms"] / ours["median_ms"] if timed else None,
            "memory_ratio": peer["peak_mib"] / ours["peak_mib"]
            if timed and peer.get("peak_mib") and ours.get("peak_mib")
            else None,
        }
    value = ours[target.metric]
    slower = [p["time_ratio"] > 1 for p in peers.values() if p["time_ratio"] is not None]
    missing = [name for name, p in peers.items() if p["time_ratio"] is None]
    met = target.met(value) and all(slower)
    verdict = "yes" if met and not missing else "NO" if not met else f"so far (not measured: {', '.join(missing)})"
    return {"target": target.label(), "value": value, "met": met, "verdict": verdict, "peers": peers}


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target (issue 11) | ours | met | peers: time / ours, peak memory / ours |",
        "| --- | ---: | --- | --- |",
    ]
    for target in TARGETS:
        verdict = judge(rows, target)
        if verdict["value"] is None:
            lines.append(f"| {verdict['target']} | not measured | — | |")
            continue
        unit = "%" if target.metric == "pct_of_ceiling" else "×"
        peers = "; ".join(
            f"{name}: not measured"
            if p["time_ratio"] is None
            else f"{name}: {p['time_ratio']:.2f}× time"
            + ("" if p["memory_ratio"] is None else f", {p['memory_ratio']:.2f}× memory")
            for name, p in verdict["peers"].items()
        )
        lines.append(f"| {verdict['target']} | {verdict['value']:.2f}{unit} | {verdict['verdict']} | {peers} |")
    return "\n".join(lines)


def header(payload: dict[str, Any]) -> str:
    env, ceilings = payload["environment"], payload.get("ceilings", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    measured = ", ".join(f"{k} {v:,.0f}" for k, v in ceilings.items()) or "none (CPU run)"
    return (
        f"{env.get('device')} · {versions} · CUDA {env.get('cuda')} · git {env.get('git_revision')} · "
        f"{env.get('date')}\nceilings measured in the run: {measured}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mathforge.bench.kernels_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("results", nargs="+", type=Path, help="kernels results JSON files of one run")
    args = parser.parse_args(argv)
    try:
        payload = load(args.results)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = payload["rows"]
    print(header(payload), results_table(rows), "**Targets**", targets_table(rows), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
