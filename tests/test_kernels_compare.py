"""`python -m mathforge.bench.compare`: matches rows, flags a regression above the threshold, exits non-zero."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mathforge.bench.compare import main, parse_threshold
from mathforge.errors import ConfigError


def _write(path, medians: dict[tuple[str, str], float]) -> str:
    rows = [
        {
            "op": op,
            "mode": mode,
            "provider": "mathforge",
            "shape": {"tokens": 8, "vocab": 7},
            "dtype": "bfloat16",
            "median_ms": ms,
            "p20_ms": ms,
            "p80_ms": ms,
        }
        for (op, mode), ms in medians.items()
    ]
    rows.append({"op": "rms_norm", "mode": "full", "provider": "liger", "shape": {}, "dtype": "bfloat16", "error": "x"})
    path.write_text(json.dumps({"environment": {}, "rows": rows}))
    return str(path)


def test_threshold_parsing():
    assert parse_threshold("5%") == pytest.approx(0.05) and parse_threshold("0.1") == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="max-regression"):
        parse_threshold("fast")


def test_regression_is_flagged_and_exits_nonzero(tmp_path, capsys):
    old = _write(tmp_path / "old.json", {("cross_entropy", "full"): 1.0, ("rms_norm", "forward"): 2.0})
    slower = _write(tmp_path / "new.json", {("cross_entropy", "full"): 1.06, ("rms_norm", "forward"): 1.0})
    assert main([old, slower, "--max-regression", "5%"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION  1.060x" in out and "2 compared, 1 regressed" in out
    assert main([old, slower, "--max-regression", "10%"]) == 0
    assert main([old, old]) == 0


def test_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main([str(bad), str(bad)]) == 2
    assert "not a kernels benchmark result" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    old = _write(tmp_path / "old.json", {("swiglu", "full"): 1.0})
    new = _write(tmp_path / "new.json", {("swiglu", "full"): 2.0})
    result = subprocess.run([sys.executable, "-m", "mathforge.bench.compare", old, new], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
