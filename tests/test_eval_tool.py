"""Tool-integrated mode: hostile model code must not hurt the evaluator; output is fed back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mathforge.errors import ConfigError
from mathforge.evaluate import runner
from mathforge.evaluate.benchmarks import Benchmark, Item
from mathforge.evaluate.sandbox import Sandbox, SandboxError, run_python
from mathforge.evaluate.tool import generate_with_tools, pending_code


def test_plain_code_runs_and_prints():
    result = run_python("import math\nprint(math.comb(10, 3))", timeout=10)
    assert result.text() == "120" and result.returncode == 0


def test_infinite_loop_is_killed_by_the_wall_clock():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout=1.5, cpu_seconds=5)
    assert result.timed_out and time.monotonic() - start < 6
    assert "TimeoutError" in result.text()


def test_cpu_limit_stops_busy_code_before_the_wall_clock():
    result = run_python("x = 0\nwhile True:\n    x += 1", timeout=20, cpu_seconds=1)
    assert not result.timed_out and result.returncode != 0


def test_the_audit_hook_explains_refusals_first():
    result = run_python("import os\nwhile True:\n    os.fork()", timeout=5)
    assert "PermissionError: sandbox: os.fork is not allowed" in result.output and result.returncode == 1


def test_limits_must_be_positive():
    with pytest.raises(ConfigError, match="must be positive"):
        run_python("print(1)", timeout=0)


def test_pending_code_only_when_the_text_ends_after_a_block():
    assert pending_code("Let me compute.\n```python\nprint(2**10)\n```\n") == "print(2**10)\n"
    assert pending_code("```python\nprint(1)\n```\nSo the answer is 1.") is None
    assert pending_code("no code") is None


class _ScriptedBackend:
    """Answers round 1 with code, round 2 with a boxed answer that quotes the output it saw."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, *, n=1, stop=(), **_):
        assert "```output" in stop
        self.prompts.append(list(prompts))
        out = []
        for prompt in prompts:
            if "```output\n" not in prompt:
                out.append([" Compute it.\n```python\nprint(sum(range(101)))\n```\n"])
            else:
                seen = prompt.split("```output\n")[-1].split("\n")[0]
                out.append([f" The sum is \\boxed{{{seen}}}."])
        return out


def test_generate_with_tools_feeds_output_back(tmp_path: Path):
    backend = _ScriptedBackend()
    texts = generate_with_tools(backend, ["Q: sum 0..100?\nA:"], rounds=4, timeout=10)
    assert len(backend.prompts) == 2
    assert "```output\n5050\n```" in texts[0] and texts[0].endswith("\\boxed{5050}.")


def test_generate_with_tools_runs_a_round_of_snippets_concurrently():
    class Parallel:
        def generate(self, prompts, **_):
            return [
                [f"```python\nimport time\ntime.sleep(1)\nprint({k} ** 2)\n```\n"]
                if "```output" not in p
                else [" done"]
                for k, p in enumerate(prompts)
            ]

    start = time.monotonic()
    texts = generate_with_tools(Parallel(), ["a", "b", "c", "d"], rounds=1, timeout=10, workers=4)
    assert [t.split("```output\n")[1].split("\n")[0] for t in texts] == ["0", "1", "4", "9"]
    assert time.monotonic() - start < 3.5  # four 1-second sleeps side by side, not one after another


def _one_item_bench(monkeypatch):
    bench = Benchmark("sum", [Item("q1", "What is 0 + 1 + ... + 100?", "5050", {})], [])
    monkeypatch.setattr(runner, "load_benchmark", lambda *a, **k: bench)


def test_run_eval_tool_records_the_sandbox_in_the_report(monkeypatch, tmp_path: Path):
    _one_item_bench(monkeypatch)
    results = runner.run_eval(
        backend=_ScriptedBackend(), bench="sum", tool=True, prompt="plain", out=tmp_path, show_progress=False
    )
    assert results["benchmarks"]["sum"]["accuracy_lenient"] == 1.0
    assert results["sandbox"] == Sandbox(preload=()).isolation.as_dict()
    assert "Model code ran in the sandbox" in (tmp_path / "results.md").read_text()


def test_run_eval_tool_refuses_an_unsafe_sandbox_before_generating(monkeypatch):
    _one_item_bench(monkeypatch)
    monkeypatch.setattr(runner, "Sandbox", lambda: Sandbox(isolation="none", preload=()))
    backend = _ScriptedBackend()
    with pytest.raises(SandboxError, match="not safe.*--unsafe-sandbox"):
        runner.run_eval(backend=backend, bench="sum", tool=True, prompt="plain", show_progress=False)
    assert backend.prompts == []
    results = runner.run_eval(
        backend=backend, bench="sum", tool=True, prompt="plain", show_progress=False, unsafe_sandbox=True
    )
    assert results["sandbox"]["safe"] is False and results["sandbox"]["level"] == "none"


def test_a_zygote_killed_from_outside_is_replaced():
    with Sandbox(preload=()) as sandbox:
        assert sandbox.run("print(1)").text() == "1"
        first = sandbox._process.pid
        os.kill(first, signal.SIGKILL)
        sandbox._process.wait()
        assert sandbox.run("print(2)").text() == "2" and sandbox._process.pid != first
