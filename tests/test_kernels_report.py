"""`mathforge.bench.kernels_report`: the tables and issue 11's verdicts from a kernels results file (made-up
numbers in the file's own format), and clear errors for files that are not one."""

from __future__ import annotations

import json

import pytest

from mathforge.bench import kernels_report as report
from mathforge.errors import DataError

CE = {"tokens": 16384, "vocab": 32000}
FLCE = {"tokens": 16384, "hidden": 4096, "vocab": 128256}


def _row(op, shape, provider, ms, peak=100.0, **rates):
    return {
        "op": op,
        "provider": provider,
        "shape": shape,
        "dtype": "bfloat16",
        "mode": "full",
        "median_ms": ms,
        "p20_ms": ms * 0.99,
        "p80_ms": ms * 1.01,
        "peak_mib": peak,
        **rates,
    }


def _write(path, rows, device="NVIDIA H200"):
    payload = {
        "environment": {"device": device, "versions": {"torch": "2.11.0"}, "cuda": "13.0", "git_revision": "abc"},
        "ceilings": {"copy_gbs": 4300.0, "matmul_tflops": 790.0},
        "rows": rows,
    }
    path.write_text(json.dumps(payload))
    return path


def _rows():
    return [
        _row("cross_entropy", CE, "mathforge", 0.55, peak=2000, gbs=3800.0, pct_of_ceiling=88.4),
        _row("cross_entropy", CE, "liger", 0.80, peak=1000, gbs=2600.0, pct_of_ceiling=60.5),
        _row("cross_entropy", CE, "torch.compile", 0.70, peak=4000, gbs=3000.0, pct_of_ceiling=69.8),
        {**_row("cross_entropy", CE, "mathforge", 0.3), "mode": "forward"},  # not a fwd+bwd row: ignored
        _row("fused_linear_cross_entropy", FLCE, "mathforge", 90.0, peak=5000, tflops=573.0, x_floor=1.37),
        _row("fused_linear_cross_entropy", FLCE, "liger", 85.0, peak=1500, tflops=607.0, x_floor=1.30),
        {
            "op": "fused_linear_cross_entropy",
            "provider": "cce",
            "shape": FLCE,
            "dtype": "bfloat16",
            "mode": "full",
            "error": "RuntimeError: out of memory",
        },
    ]


def test_verdicts_follow_the_issue_targets():
    rows = _rows()
    by_label = {t.label(): report.judge(rows, t) for t in report.TARGETS}
    ce = next(v for k, v in by_label.items() if k.startswith("cross_entropy [tokens=16384, vocab=32000]"))
    assert ce["value"] == 88.4 and ce["met"] is True and ce["verdict"] == "yes"
    assert ce["peers"]["liger"]["time_ratio"] == pytest.approx(0.80 / 0.55)
    assert ce["peers"]["liger"]["memory_ratio"] == pytest.approx(0.5)
    flce = next(v for k, v in by_label.items() if k.startswith("fused_linear_cross_entropy [tokens=16384, hidden=4096"))
    assert flce["value"] == 1.37 and flce["met"] is False and flce["verdict"] == "NO"  # over 1.25×, slower than Liger
    assert flce["peers"]["cce"]["time_ratio"] is None  # its row failed: not a time
    missing = next(v for k, v in by_label.items() if k.startswith("cross_entropy [tokens=16384, vocab=151936]"))
    assert missing["verdict"] == "not measured" and missing["met"] is None


def test_a_target_met_with_a_peer_missing_says_so():
    rows = [r for r in _rows() if r["provider"] != "torch.compile"]
    ce = report.judge(rows, report.TARGETS[0])
    assert ce["met"] is True and ce["verdict"] == "so far (not measured: torch.compile)"


def test_cli_prints_tables_of_one_run_from_several_files(tmp_path, capsys):
    first = _write(tmp_path / "kernels.json", _rows()[:4])
    second = _write(tmp_path / "kernels_flce_chunks.json", _rows()[4:])
    assert report.main([str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H200" in out and "copy_gbs 4,300" in out
    assert "| liger | 0.800 (0.792–0.808) | 2,600 GB/s | 60% |  | 1,000 | 1.45× |" in out
    assert "| cce | failed: RuntimeError: out of memory |" in out
    assert (
        "| fused_linear_cross_entropy [tokens=16384, hidden=4096, vocab=128256]: ≤ 1.25 × the 6NHV matmul floor" in out
    )
    assert "| 1.37× | NO | liger: 0.94× time, 0.30× memory; cce: not measured; torch.compile: not measured |" in out
    assert out.count("not measured | — |") == 7  # two CE vocabularies, two FLCE shapes, rms_norm, swiglu, rope
    assert "| rms_norm [tokens=16384, hidden=4096]: ≥ 80% of copy bandwidth | not measured | — | |" in out


def test_bad_files_are_refused_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert report.main([str(bad)]) == 2
    assert "bad.json: not a kernels benchmark result" in capsys.readouterr().err
    no_op = tmp_path / "no_op.json"
    no_op.write_text(json.dumps({"environment": {}, "rows": [{"provider": "x"}]}))
    with pytest.raises(DataError, match="no_op.json: 'rows' must be a list of result rows"):
        report.load([no_op])
    good = _write(tmp_path / "good.json", _rows())
    other = _write(tmp_path / "other.json", _rows(), device="NVIDIA H100 80GB HBM3")
    with pytest.raises(DataError, match="other.json: device 'NVIDIA H100 80GB HBM3', not 'NVIDIA H200'"):
        report.load([good, other])
