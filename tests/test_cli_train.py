"""`mathforge train` as a first-time user meets it: an earlier run is never replaced or appended to silently,
a resume with other settings is refused, Ctrl-C saves a checkpoint, bad settings and folders are one-line
errors before any work, logs fill when piped, and --dry-run shows the resolved config."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _trainer_utils import make_workspace, recipe

from mathforge.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    return root, make_workspace(root)


def _stages(ws, *steps: int) -> str:
    names = ["normal", "hard"]
    return "".join(
        f'\n[[stages]]\nname = "{names[i]}"\ndata = ["{ws["data"]}"]\nsteps = {n}\n' for i, n in enumerate(steps)
    )


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Runs `mathforge ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _error_line(err: str) -> str:
    """The one line of an error (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. an earlier run: --resume or --force


def test_an_earlier_run_is_refused_and_force_says_what_it_removed(workspace, capsys):
    root, ws = workspace
    path = recipe(root, ws, out="again", stages=_stages(ws, 3))
    assert _cli(capsys, "train", path)[0] == 0
    before = _snapshot(root / "again")
    assert "final/model.safetensors" in before and _metrics_steps(root / "again") == [1, 2, 3]

    code, out, err = _cli(capsys, "train", path)
    assert code == 2
    line = _error_line(err)
    assert f"{root / 'again'} already holds a training run" in line
    assert "checkpoints/ (1 checkpoint)" in line and "metrics.jsonl (3 records)" in line and "final/" in line
    assert "pass --resume to continue it, or --force to delete it and start over" in line
    assert _snapshot(root / "again") == before  # nothing touched

    code, out, err = _cli(capsys, "train", path, "--force", "--set", "stages.0.steps=2")
    assert code == 0, err
    removed = next(line for line in out.splitlines() if line.startswith("--force"))
    assert removed == (
        f"--force: removed from {root / 'again'}: checkpoints/ (1 checkpoint), final/, metrics.jsonl (3 records), "
        "summary.json, config.json"
    )
    assert _metrics_steps(root / "again") == [1, 2]  # a fresh log, not appended to the old one
    assert json.loads((root / "again" / "config.json").read_text())["stages"][0]["steps"] == 2

    code, _, err = _cli(capsys, "train", path, "--resume", "--force")
    assert code == 2 and "pass one of them" in _error_line(err)


# ---------------------------------------------------------------- 2. a resume must continue the same run


def test_resume_with_other_settings_is_refused_naming_them(workspace, capsys):
    root, ws = workspace
    path = recipe(root, ws, out="changed", stages=_stages(ws, 6))
    code, out, _ = _cli(capsys, "train", path, "--set", "train.max_steps=3")
    assert code == 0 and "stopped early (max_steps=3); continue with --resume" in out
    before = _snapshot(root / "changed")

    code, _, err = _cli(capsys, "train", path, "--resume", "--set", "optim.lr=1e-3", "--set", "stages.0.steps=8")
    assert code == 2
    line = _error_line(err)
    assert f"cannot resume {root / 'changed'} with other settings" in line
    assert "optim.lr = 0.003 in the run, 0.001 now; stages.0.steps = 6 in the run, 8 now" in line
    assert _snapshot(root / "changed") == before

    # settings that do not change what is computed may differ: logging, limits
    code, out, err = _cli(capsys, "train", path, "--resume", "--set", "run.log_every=2")
    assert code == 0, err
    summary = json.loads((root / "changed" / "summary.json").read_text())
    assert summary["state"]["global_step"] == 6 and summary["stages"][0]["steps"] == 6
    assert _metrics_steps(root / "changed") == [1, 2, 3, 4, 6]  # log_every = 2 after the resume


# ---------------------------------------------------------------- 3. Ctrl-C saves a checkpoint


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(workspace):
    root, ws = workspace
    path = recipe(root, ws, out="ctrl-c", stages=_stages(ws, 30))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mathforge.cli", "train", str(path), "--no-progress"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = root / "ctrl-c" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted at step (\d+); continue with --resume \(checkpoint: (.+)\)", last)
    assert match, err
    step = int(match.group(1))
    assert 1 <= step < 30
    checkpoint = Path(match.group(2))
    assert checkpoint == root / "ctrl-c" / "checkpoints" / f"step-{step:08d}"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert _metrics_steps(root / "ctrl-c") == list(range(1, step + 1))  # the last step was logged too
    assert not (root / "ctrl-c" / "final").exists()

    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _metrics_steps(root / "ctrl-c") == list(range(1, 31))
    summary = json.loads((root / "ctrl-c" / "summary.json").read_text())
    assert summary["state"]["global_step"] == 30 and summary["stages"][0]["steps"] == 30
    assert (root / "ctrl-c" / "final" / "model.safetensors").exists()


# ---------------------------------------------------------------- 4.–6. bad settings and folders


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.0.steps=-3", "stages.0.steps = -3 (normal) must be >= 0"),
        ("stages.0.epochs=-1", "stages.0.epochs = -1.0 (normal) must be >= 0"),
        ('run.out_dir=""', '[run] out_dir is empty; name the run folder, e.g. out_dir = "runs/my-run"'),
        ("run.log_every=0", "[run] log_every = 0 must be >= 1"),
        ("train.max_steps=-1", "[train] max_steps = -1 must be >= 0"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(workspace, capsys, override, message):
    root, ws = workspace
    path = recipe(root, ws, out="bad-settings", stages=_stages(ws, 2))
    code, _, err = _cli(capsys, "train", path, "--set", override)
    assert code == 2
    assert message in _error_line(err)
    assert not (root / "bad-settings").exists()


def test_zero_learning_rate_warns_unless_a_stage_sets_one(workspace, capsys):
    root, ws = workspace
    path = recipe(root, ws, out="lr0", stages=_stages(ws, 2, 2))
    code, _, err = _cli(capsys, "train", path, "--dry-run", "--set", "optim.lr=0")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {path}: stage {name} trains with learning rate 0 ([optim] lr = 0): its steps will not change "
        "the weights"
        for name in ("normal", "hard")
    ]
    code, _, err = _cli(
        capsys,
        "train",
        path,
        "--dry-run",
        "--set",
        "optim.lr=0",
        "--set",
        "stages.0.lr=1e-3",
        "--set",
        "stages.1.lr=1e-3",
    )
    assert code == 0 and "warning" not in err


def test_a_missing_model_folder_is_not_called_an_unknown_preset(workspace, capsys):
    root, ws = workspace
    path = recipe(root, ws, out="no-model", stages=_stages(ws, 2))
    missing = root / "models" / "qwen-0.5b"
    code, _, err = _cli(capsys, "train", path, "--set", f'model.init="{missing}"')
    assert code == 2
    line = _error_line(err)
    assert f"model.init = '{missing}': no such folder, and not a preset name (presets: tiny, " in line
    assert not (root / "no-model").exists()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(workspace, capsys):
    root, ws = workspace
    file = root / "a-file"
    file.write_text("keep me\n")
    for out, message in [(file, "is a file, not a folder"), (file / "run", f"{file} is a file, so the folder")]:
        path = recipe(root, ws, out="file-out", stages=_stages(ws, 2))
        code, _, err = _cli(capsys, "train", path, "--set", f'run.out_dir="{out}"')
        assert code == 2
        line = _error_line(err)
        assert f"[run] out_dir = '{out}'" in line and message in line
    assert file.read_text() == "keep me\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused(workspace, capsys):
    root, ws = workspace
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        path = recipe(root, ws, out="locked-out", stages=_stages(ws, 2))
        code, _, err = _cli(capsys, "train", path, "--set", f'run.out_dir="{locked / "run"}"')
        assert code == 2 and f"{locked} is not writable" in _error_line(err)
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- 7. logs and summaries


def test_piped_logs_a_line_per_logging_step_and_warns_without_tensorboard(workspace, capsys, monkeypatch):
    root, ws = workspace
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    path = recipe(root, ws, out="logs", stages=_stages(ws, 5))
    code, out, err = _cli(capsys, "train", path, "--set", "run.log_every=2", "--set", "run.tensorboard=true")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("normal step")]
    records = [json.loads(line) for line in (root / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [2, 4, 5]
    assert len(lines) == 3
    for line, record in zip(lines, records, strict=True):
        assert line.startswith(f"normal step {record['step']}/5 (global {record['global_step']}): loss ")
        assert f"loss {record['loss']:.4f}, lr {record['lr']:.3g}, " in line and line.endswith(" tokens/s")
    warnings = [line for line in err.splitlines() if "tensorboard" in line]
    assert warnings == [
        f"warning: [run] tensorboard = true but tensorboard is not installed; metrics go to "
        f"{root / 'logs' / 'metrics.jsonl'} only (pip install tensorboard, or set run.tensorboard = false)"
    ]


def test_resume_lists_every_stage_and_drops_redone_metrics(workspace, capsys):
    root, ws = workspace
    path = recipe(root, ws, out="two-stages", extra="", stages=_stages(ws, 4, 6))
    sets = ["--set", "run.checkpoint_every=2", "--set", "run.keep_last=3"]
    code, _, err = _cli(capsys, "train", path, *sets, "--set", "train.max_steps=9")
    assert code == 0, err
    assert _metrics_steps(root / "two-stages") == list(range(1, 10))
    # a process killed after logging step 9 but before its checkpoint: the last checkpoint is step 8
    checkpoints = root / "two-stages" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*"))[-2:] == ["step-00000008", "step-00000009"]
    import shutil

    shutil.rmtree(checkpoints / "step-00000009")
    (root / "two-stages" / "summary.json").unlink()

    code, out, err = _cli(capsys, "train", path, *sets, "--resume")
    assert code == 0, err
    assert "resuming at step 8: dropped 1 metrics records of later steps (redone)" in out
    assert _metrics_steps(root / "two-stages") == list(range(1, 11))  # step 9 once, not twice
    summary = json.loads((root / "two-stages" / "summary.json").read_text())
    assert [(s["name"], s["steps"], s["planned_steps"]) for s in summary["stages"]] == [
        ("normal", 4, 4),
        ("hard", 6, 6),
    ]
    assert summary["stages"][0]["tokens"] > 0 and summary["stages"][1]["tokens"] > 0
    assert "normal" in out and "hard" in out  # the printed table shows both stages


# ---------------------------------------------------------------- 8. --dry-run


def test_dry_run_prints_the_resolved_config_and_trains_nothing(workspace, capsys):
    root, ws = workspace
    path = recipe(root, ws, out="dry", stages=_stages(ws, 2))
    code, out, err = _cli(capsys, "train", path, "--dry-run", "--set", "optim.lr=1e-4", "--set", "stages.0.steps=7")
    assert code == 0, err
    resolved = json.loads(out)
    assert resolved["optim"]["lr"] == 1e-4 and resolved["stages"][0]["steps"] == 7
    assert resolved["run"]["out_dir"] == str(root / "dry") and resolved["optim"]["schedule"] == "cosine"
    assert err.strip().splitlines()[-1] == "dry run: nothing trained"
    assert not (root / "dry").exists()
