"""The GPU session runner on the CPU: plans, budgets, timeouts, and what comes back (two files)."""

from __future__ import annotations

import json
import re
import tarfile
import time
from pathlib import Path

import pytest

from mathforge.bench import common, gpu_session
from mathforge.bench.gpu_session import Phase, run_phase, run_plan
from mathforge.errors import ConfigError


def test_unknown_plan_is_an_error_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown plan 'kernel'; known: kernels, smoke, train"):
        gpu_session.plan_phases("kernel")
    assert gpu_session.main(["kernel", "--out", str(tmp_path)]) == 2
    assert "known: kernels, smoke, train" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing written for a bad plan"


def test_every_gpu_plan_runs_pytest_on_existing_gpu_tests_first_and_fits_one_command():
    root = Path(__file__).resolve().parents[1]
    for name, files in (("kernels", gpu_session.KERNEL_TESTS), ("train", gpu_session.MODEL_TESTS)):
        first = gpu_session.PLANS[name][0]
        assert first.name == "pytest-gpu" and first.argv[:6] == ("-m", "pytest", "-q", "-m", "gpu", "-p")
        assert set(files) <= set(first.argv) and all((root / f).is_file() for f in first.argv[7:])
        assert sum(p.cap_s for p in gpu_session.PLANS[name]) <= 540, "one device command is at most 10 minutes"
        names = [p.name for p in gpu_session.PLANS[name]]
        assert len(names) == len(set(names)), "one log per phase"


def test_every_test_file_with_gpu_tests_is_in_a_plan():
    tests = Path(__file__).resolve().parent
    marker = re.compile(r"\bpytest\.mark\.gpu\b")  # a decorator, pytestmark, or marks=... of a pytest.param
    marked = {f"tests/{f.name}" for f in tests.glob("test_*.py") if marker.search(f.read_text())}
    planned = set(gpu_session.KERNEL_TESTS) | set(gpu_session.MODEL_TESTS) | set(gpu_session.PEER_CASE_TESTS)
    assert marked and marked <= planned
    peers = re.compile(r"^pytestmark = pytest\.mark\.peer_cases\b", re.MULTILINE)
    peer_files = {f"tests/{f.name}" for f in tests.glob("test_*.py") if peers.search(f.read_text())}
    assert peer_files == set(gpu_session.PEER_CASE_TESTS)
    (phase,) = [p for p in gpu_session.PLANS["kernels"] if p.name == "peer-cases"]
    assert phase.argv[3:5] == ("-m", "peer_cases") and set(gpu_session.PEER_CASE_TESTS) <= set(phase.argv)


def test_gpu_plans_use_flags_the_benchmarks_accept():
    """Every benchmark phase's arguments parse with that benchmark's own parser (argparse exits on a bad flag)."""
    from mathforge.bench import kernels, model, train

    parsers = {"mathforge.bench.kernels": kernels, "mathforge.bench.model": model, "mathforge.bench.train": train}
    checked = 0
    for phase in gpu_session.PLANS["kernels"] + gpu_session.PLANS["train"]:
        if phase.argv[0] == "-m" and phase.argv[1] in parsers:
            parsers[phase.argv[1]]._parser().parse_args(list(phase.argv[2:]))
            checked += 1
    assert checked == 4
    with pytest.raises(SystemExit):
        kernels._parser().parse_args(["--flce-chunks-per-row", "8"])


def test_phase_outcomes_ok_failed_timeout_skipped(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    far = time.monotonic() + 60
    ok = run_phase(Phase("ok", ("-c", "print('hello')"), 30, min_s=0), tmp_path, far, env)
    assert ok["status"] == "ok" and ok["exit_code"] == 0 and ok["log_tail"] == ["hello"]
    failed = run_phase(Phase("bad", ("-c", "import sys; print('boom'); sys.exit(3)"), 30, min_s=0), tmp_path, far, env)
    assert failed["status"] == "failed" and failed["exit_code"] == 3 and failed["log_tail"] == ["boom"]
    started = time.monotonic()
    slow = run_phase(Phase("slow", ("-c", "import time; time.sleep(60)"), 1, min_s=0), tmp_path, far, env)
    assert slow["status"] == "timeout" and slow["exit_code"] is None and slow["limit_s"] == 1
    assert time.monotonic() - started < 30
    late = run_phase(Phase("late", ("-c", "print(1)"), 30, min_s=20), tmp_path, time.monotonic() + 5, env)
    assert late["status"] == "skipped" and "s of the budget left" in late["why"]
    assert not (tmp_path / "logs" / "late.log").exists()


def test_phase_is_capped_by_what_is_left_of_the_budget(tmp_path):
    out = run_phase(Phase("p", ("-c", "print(1)"), 300, min_s=0), tmp_path, time.monotonic() + 40, {})
    assert out["status"] == "ok" and 35 <= out["limit_s"] <= 40


def test_plan_packs_results_and_logs_into_two_files(tmp_path, monkeypatch):
    writer = (
        "from mathforge.bench.common import write_result; "
        "print(write_result('probe', {'environment': {}, 'rows': [1, 2]}))"
    )
    monkeypatch.setitem(
        gpu_session.PLANS, "probe", (Phase("write", ("-c", writer), 60, min_s=0), Phase("fail", ("-c", "1/0"), 60, 0))
    )
    summary = run_plan("probe", 120, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["session.tar.gz", "summary.json"]
    assert all(o["status"] != "pending" for o in summary["phases"])
    assert [o["status"] for o in summary["phases"]] == ["ok", "failed"]
    assert "ZeroDivisionError: division by zero" in summary["phases"][1]["log_tail"][-1]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    with tarfile.open(tmp_path / "out" / "session.tar.gz") as tar:
        names = set(tar.getnames())
        payload = json.load(tar.extractfile("session/results/probe.json"))
    assert {"session/logs/write.log", "session/logs/fail.log", "session/summary.json"} <= names
    assert payload["rows"] == [1, 2]
    assert gpu_session.main(["probe", "--budget", "120", "--out", str(tmp_path / "again")]) == 1


def test_each_phase_finds_the_earlier_phases_already_packed(tmp_path, monkeypatch):
    """The device tool's limit can end the command mid-phase (less device time left than asked for): what the
    earlier phases measured must already be in out/, with the phases still to run marked pending."""
    out = tmp_path / "out"
    check = (
        "import json, sys, tarfile; "
        f"tar = tarfile.open({str(out / 'session.tar.gz')!r}); "
        "names = tar.getnames(); "
        f"summary = json.load(open({str(out / 'summary.json')!r})); "
        "ok = 'session/logs/first.log' in names and [o['status'] for o in summary['phases']] == "
        "['ok', 'pending', 'pending']; "
        "sys.exit(0 if ok else 3)"
    )
    phases = (Phase("first", ("-c", "print('measured')"), 60, 0), Phase("check", ("-c", check), 60, 0))
    monkeypatch.setitem(gpu_session.PLANS, "probe", (*phases, Phase("last", ("-c", "pass"), 60, 0)))
    summary = run_plan("probe", 120, out)
    assert [o["status"] for o in summary["phases"]] == ["ok", "ok", "ok"], summary["phases"][1]["log_tail"]


def test_results_folder_prefers_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path / "env"))
    assert common.results_folder(tmp_path / "arg") == tmp_path / "arg"
    assert common.results_folder() == tmp_path / "env"
    monkeypatch.delenv(common.RESULTS_ENV)
    assert common.results_folder() == common.RESULTS_DIR / common.device_slug()
