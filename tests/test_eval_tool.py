"""Tool-integrated mode: hostile model code must not hurt the evaluator; output is fed back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mathforge.evaluate.sandbox import run_python
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


def test_fork_bomb_is_refused():
    result = run_python("import os\nwhile True:\n    os.fork()", timeout=5)
    assert "PermissionError" in result.output and "os.fork" in result.output


def test_huge_allocation_fails_inside_the_child():
    result = run_python("x = bytearray(16 << 30)\nprint('allocated')", timeout=10, memory_mb=512)
    assert "MemoryError" in result.output and "allocated" not in result.output


def test_writes_outside_the_temp_dir_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')", timeout=10)
    assert "PermissionError" in result.output and not target.exists()
    inside = run_python("open('ok.txt', 'w').write('hi')\nprint(open('ok.txt').read())", timeout=10)
    assert inside.text() == "hi"


def test_network_is_refused():
    result = run_python(
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\nprint('connected')", timeout=10
    )
    assert "connected" not in result.output and ("PermissionError" in result.output or "Error" in result.output)


def test_subprocess_and_kill_are_refused():
    result = run_python(f"import os\nos.kill({os.getpid()}, 9)", timeout=10)
    assert "PermissionError" in result.output  # and we are still alive to assert it


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
            if "```output" not in prompt:
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
