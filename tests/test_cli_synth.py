"""`mathforge synth` and `mathforge plot` as a user runs them: bad outputs, bad --merge, no server, failing
servers and progress in a log file each end in one line naming what to fix, and lose nothing."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from fake_openai import LoopbackServer

from mathforge.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "synth" / "configs"
DEMO = str(CONFIGS / "symbolic-demo.toml")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root ignores permission bits: /sys refuses even root)."""
    if os.geteuid() == 0:
        return Path("/sys/mathforge-test-output")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "run"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jiuzhang_toml(tmp_path: Path, url: str, out: Path, items: int = 6) -> Path:
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"text": f"Lesson {i}: a prime has exactly two divisors."}) + "\n" for i in range(3))
    )
    toml = tmp_path / "jz.toml"
    toml.write_text(
        f'[run]\noutput = "{out}"\nitems = {items}\nprogress = false\n'
        '[pipeline]\nkind = "jiuzhang"\n'
        f'[backend]\nkind = "openai"\nbase_urls = ["{url}"]\nconcurrency = 4\nmax_retries = 1\nbackoff_s = 0.01\n'
        "timeout_s = 2.0\n"
        f'[jiuzhang]\ntexts = ["{texts}"]\nvariants = ["cot"]\n'
        "[quality]\ndecontaminate = false\nnear_dedup = false\n"
    )
    return toml


def answer(messages, index):
    return "Problem: What is 2 + 3?\nSolution: 2 + 3 = 5.\nThe answer is: 5"


@pytest.mark.parametrize("value", ["", "FILE", "FILE/sub", "READONLY"])
def test_unusable_run_output_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "FILE"
    existing.write_text("keep me\n")
    path = {"": "", "FILE": str(existing), "FILE/sub": str(existing / "sub"), "READONLY": None}[value]
    path = str(read_only_folder(tmp_path)) if path is None else path
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_cli(["synth", DEMO, "--set", f'run.output="{path}"', "--set", "run.items=50"], capsys)
    line = one_error_line(err)
    assert code == 2 and "run.output" in line
    if value == "":
        assert "run.output is empty" in line
    elif value == "READONLY":
        assert f"run.output = '{path}': cannot write there (" in line
    else:
        assert f"{existing} is a file, not a folder" in line
    assert existing.read_text() == "keep me\n"  # the file in the way is untouched
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, here or in the current folder


@pytest.mark.parametrize("merge", ["-1", "0"])
def test_merge_needs_a_shard_count(tmp_path, capsys, merge):
    out = tmp_path / "m"
    code, _, err = run_cli(["synth", DEMO, "--set", f'run.output="{out}"', "--merge", merge], capsys)
    assert code == 2
    assert one_error_line(err) == (
        f"error: --merge {merge}: give the number of shards the run was split into (>= 1), e.g. --merge 4"
    )
    assert not out.exists()


def test_merge_of_two_shards_still_works(tmp_path, capsys):
    out = tmp_path / "m"
    sets = ["--set", f'run.output="{out}"', "--set", "run.items=60", "--set", "run.progress=false"]
    for shard in ("0/2", "1/2"):
        assert run_cli(["synth", DEMO, *sets, "--shard", shard], capsys)[0] == 0
    code, out_text, _ = run_cli(["synth", DEMO, *sets, "--merge", "2"], capsys)
    manifest = json.loads((out / "manifest-merged.json").read_text())
    assert code == 0 and manifest["filters"]["generation"]["in"] == 60 and manifest["rows"] > 50


def test_no_server_fails_in_seconds_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    out = tmp_path / "jz"
    start = time.monotonic()
    code, _, err = run_cli(["synth", str(jiuzhang_toml(tmp_path, url, out))], capsys)
    assert time.monotonic() - start < 20  # it used to retry for minutes
    assert code == 2
    assert one_error_line(err) == (
        f"error: cannot reach {url}: connection refused (backend.base_urls); is the server running (or still loading its model)?"
    )
    assert not (out / "work").exists()  # no journal: the same command works once the server is up


def test_failed_items_print_the_first_error_with_its_url_and_resume_completes_them(tmp_path, capsys):
    out = tmp_path / "jz"
    with LoopbackServer(answer, faults={"500": 1.0}) as broken:
        toml = jiuzhang_toml(tmp_path, broken.url, out)
        code, _, err = run_cli(["synth", str(toml)], capsys)
    line = one_error_line(err)
    assert code == 1
    assert line.startswith("error: 6 of 6 items failed (backend errors); first: ")
    assert "InternalServerError" in line and broken.url in line  # the URL is named (by the client or by synth)
    assert line.endswith("fix that, then rerun with --resume")
    with LoopbackServer(answer) as good:
        toml = jiuzhang_toml(tmp_path, good.url, out)
        code, _, err = run_cli(["synth", str(toml), "--resume"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest-00000-of-00001.json").read_text())
    assert manifest["generation"]["failed"] == 0 and manifest["filters"]["generation"]["in"] == 6


def test_progress_outside_a_terminal_prints_plain_lines(tmp_path, capsys):
    out = tmp_path / "p"
    code, stdout, _ = run_cli(["synth", DEMO, "--set", f'run.output="{out}"', "--set", "run.items=200"], capsys)
    lines = [line for line in stdout.splitlines() if line.startswith("synth: ")]
    assert code == 0
    assert len(lines) == 10  # every tenth of the items (the 10 s timer does not fire in a fast run)
    assert lines[0].startswith("synth: 20/200 items (10%), 0 rejected, 0 failed, ")
    assert lines[-1].startswith("synth: 200/200 items (100%), 0 rejected, 0 failed, ") and "items/s" in lines[-1]


def test_progress_line_counts_rejected_and_failed(capsys):
    import io

    from mathforge.synth.run import Progress

    stats = {"rejected": 0, "failed": 0}
    stream = io.StringIO()  # not a terminal
    with Progress(True, 20, stats, every_s=3600, stream=stream) as progress:  # a line every 2 items
        for key in ("rejected", "failed", None):
            if key:
                stats[key] += 1
            progress.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("synth: 2/20 items (10%), 1 rejected, 1 failed, ")
    assert lines[1].startswith("synth: 3/20 items (15%), 1 rejected, 1 failed, ")  # the closing line: where it stopped


def test_plot_command_refuses_a_folder_without_metrics(tmp_path, capsys):
    code, _, err = run_cli(["plot", str(tmp_path)], capsys)
    assert code == 2 and "metrics.jsonl: not found" in one_error_line(err)
    (tmp_path / "metrics.jsonl").write_text(
        '{"global_step": 1, "loss": 2.0, "lr": 0.1, "stage": "a", "tokens_per_s": 5}\n{"glob\n'
    )
    code, _, err = run_cli(["plot", str(tmp_path)], capsys)
    assert code == 2 and "metrics.jsonl: a line is not valid JSON" in one_error_line(err)


def test_loss_plot_log_axis_ema_and_a_one_point_run(tmp_path, capsys):
    from mathforge.trainer.metrics import ema, loss_figure

    def record(step, loss, stage):
        return {"global_step": step, "loss": loss, "lr": 1e-3, "stage": stage, "tokens_per_s": 100.0}

    records = [record(s, 8.0 / s, "normal") for s in range(1, 11)] + [record(11, 0.5, "hard")]
    fig = loss_figure(records)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    raw, smooth, one_raw, one_smooth = ax.get_lines()
    assert list(raw.get_ydata()) == [8.0 / s for s in range(1, 11)]
    assert list(smooth.get_ydata()) == pytest.approx(ema([8.0 / s for s in range(1, 11)]))
    assert smooth.get_ydata()[-1] > raw.get_ydata()[-1]  # the EMA lags a falling loss
    assert one_raw.get_xydata().tolist() == [[11.0, 0.5]] and one_raw.get_marker() == "o"  # a point, not nothing

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(record(1, 3.0, "only")) + "\n")
    code, stdout, _ = run_cli(["plot", str(run)], capsys)
    assert code in (0, None) and f"wrote {run / 'loss.png'}" in stdout
    for name in ("loss.png", "throughput.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_base_url_without_a_scheme_is_named():
    from mathforge.errors import ConfigError
    from mathforge.synth.run import check_reachable

    with pytest.raises(ConfigError) as error:
        check_reachable(["localhost:8000/v1"])
    assert str(error.value) == (
        "cannot reach localhost:8000/v1: not an http(s) URL; write it like http://host:8000/v1 (backend.base_urls)"
    )


def test_a_run_starts_when_some_base_urls_answer_and_names_the_others(tmp_path, capsys):
    out = tmp_path / "jz"
    with LoopbackServer(answer, refuse="reset") as dead, LoopbackServer(answer) as good:
        urls = ["--set", f'backend.base_urls=["{dead.url}", "{good.url}"]', "--set", "backend.max_retries=3"]
        code, _, err = run_cli(["synth", str(jiuzhang_toml(tmp_path, good.url, out)), *urls], capsys)
    why = f"cannot reach {dead.url}: connection reset"
    assert code == 0 and err.splitlines() == [
        "warning: 1 of 2 backend.base_urls unreachable at start, starting on the others (benched until they "
        f"answer): {why}"
    ]
    [manifest] = out.glob("manifest-*.json")
    usage = json.loads(manifest.read_text())["usage"]
    assert usage["unreachable_at_start"] == {dead.url: why} and usage["completions"] == 6


def test_no_base_url_answering_is_refused_naming_each(tmp_path, capsys):
    out = tmp_path / "jz"
    closed = f"http://127.0.0.1:{closed_port()}/v1"
    with LoopbackServer(answer, refuse="reset") as dead:
        urls = ["--set", f'backend.base_urls=["{dead.url}", "{closed}"]']
        code, _, err = run_cli(["synth", str(jiuzhang_toml(tmp_path, dead.url, out)), *urls], capsys)
    assert code == 2 and one_error_line(err) == (
        f"error: no server answers at any of the 2 backend.base_urls: cannot reach {dead.url}: connection reset; "
        f"cannot reach {closed}: connection refused; are the servers running (or still loading their model)?"
    )
    assert not (out / "work").exists()
