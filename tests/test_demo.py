"""The demo end to end at a small size: every phase runs through the real code and leaves its files."""

import json

from mathforge.demo import Recipe, Tier, run_demo


def test_demo_runs_end_to_end(tmp_path):
    recipe = Recipe(
        tiers=(
            Tier("normal", {"arithmetic": "normal"}, 0.5, steps=12),
            Tier("hard", {"arithmetic": "hard"}, 0.5, steps=12, replay=40),
        ),
        train_items=600,
        heldout_per_tier=10,
        gsm8k_sample=4,
        vocab_size=300,
        max_new_tokens=24,
        model={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        },
        micro_batch_tokens=1024,
    )
    out = tmp_path / "demo"
    report = run_demo(out=out, recipe=recipe)  # no --minutes: the recipe's fixed steps, whatever the load

    train_questions = {json.loads(line)["prompt"] for f in (out / "data").glob("train-*.jsonl") for line in f.open()}
    heldout = [json.loads(line) for f in (out / "data").glob("heldout-*.jsonl") for line in f.open()]
    assert len(heldout) == 20 and not train_questions & {h["question"] for h in heldout}
    assert report["data"]["train_rows"] == len(train_questions)  # exact duplicates were removed by synthesis

    sets = {row["set"]: row for row in report["accuracy"]}
    assert set(sets) == {"heldout-normal", "heldout-hard", "gsm8k-sample", "heldout (all tiers)"}
    assert sets["heldout (all tiers)"]["count"] == 20 and sets["gsm8k-sample"]["count"] == 4
    for row in sets.values():
        assert 0.0 <= row["before"] <= 1.0 and 0.0 <= row["after"] <= 1.0

    stages = report["training"]["stages"]
    assert [s["name"] for s in stages] == ["normal", "hard"] and [s["steps"] for s in stages] == [12, 12]
    training = report["training"]
    assert (training["planned_steps"], training["trained_steps"], training["short_of_recipe"]) == (24, 24, False)
    assert training["budget_s"] is None and training["step_scale"] == 1.0
    replay = (out / "data" / "replay-hard.jsonl").read_text().splitlines()
    assert len(replay) == 40 and replay == (out / "data" / "train-normal.jsonl").read_text().splitlines()[:40]
    assert stages[1]["data"]["rows"] == report["data"]["tiers"]["hard"]["rows"] + 40  # stage 2 replays stage 1
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").open()]
    assert records[-1]["loss"] < records[0]["loss"]
    for name in (
        "report.json",
        "report.md",
        "accuracy.png",
        "train/loss.png",
        "train/throughput.png",
        "eval-after/results.json",
        "tokenizer/tokenizer.json",
        "model-init/config.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "| heldout (all tiers) | 20 |" in markdown
    assert "Trained 24 of 24 planned steps" in markdown and "Warning" not in markdown


def test_a_minutes_cap_scales_the_steps_and_a_short_run_is_flagged_loudly():
    import time

    from mathforge.demo import _training_budget, render_markdown

    assert _training_budget(None, time.perf_counter(), 5.0, 600.0) == (None, 1.0)
    budget, scale = _training_budget(2.0, time.perf_counter(), 5.0, 600.0)  # 120 s - 5 s evaluation - 10 s report
    assert abs(budget - 105.0) < 1.0 and abs(scale - budget / 600.0) < 1e-9
    assert _training_budget(1.0, time.perf_counter() - 300, 5.0, 600.0)[0] == 20.0  # never below 20 s
    training = {
        "probe_tokens_per_s": 439.0,
        "planned_steps": 1500,
        "trained_steps": 71,
        "short_of_recipe": True,
        "stages": [],
    }
    data = {"train_rows": 20_115, "heldout_rows": 400, "heldout_dropped_as_seen_in_training": 0}
    markdown = render_markdown({"minutes": 3.0, "training": training, "accuracy": [], "phases_s": {}, "data": data})
    assert (
        "> **Warning: trained 71 of 1,500 planned steps (--minutes 3 cap); accuracy will be low. "
        "Run without --minutes to train the whole recipe.**" in markdown
    )
    assert "this machine measured 439 tokens/s before training" in markdown


def run_cli(argv, capsys):
    import pytest

    from mathforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return exit_info.value.code, lines[0]


def test_demo_refuses_bad_minutes_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    for value in ("nan", "inf", "-inf", "-2", "0"):
        code, line = run_cli(["demo", "--minutes", value, "--out", str(out)], capsys)
        shown = {"-2": "-2.0", "0": "0.0"}.get(value, value)
        assert (
            code == 2 and line == f"error: --minutes {shown}: must be a positive number of minutes, e.g. --minutes 10"
        )
    assert not out.exists()


def test_demo_refuses_an_unusable_out_folder_before_any_work(tmp_path, capsys):
    import os
    from pathlib import Path

    blocker = tmp_path / "file"
    blocker.write_text("mine\n")
    code, line = run_cli(["demo", "--minutes", "1", "--out", str(blocker)], capsys)
    assert code == 2 and line == f"error: --out = '{blocker}': {blocker} is a file, not a folder; choose another path"
    assert blocker.read_text() == "mine\n"
    if os.geteuid() == 0:  # root ignores permission bits; /sys refuses even root
        locked = Path("/sys/mathforge-demo-test")
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        locked = tmp_path / "locked" / "demo"
    code, line = run_cli(["demo", "--minutes", "1", "--out", str(locked)], capsys)
    assert code == 2 and line.startswith(f"error: --out = '{locked}': cannot write there (")
    (tmp_path / "done" / "train").mkdir(parents=True)
    code, line = run_cli(["demo", "--out", str(tmp_path / "done")], capsys)
    assert code == 2 and "already holds a demo run" in line


def test_accuracy_figure_has_a_title_and_value_labels():
    from mathforge.demo import accuracy_figure

    fig = accuracy_figure(
        [
            {"set": "heldout-normal", "count": 10, "before": 0.0, "after": 0.9},
            {"set": "gsm8k-sample", "count": 4, "before": 0.25, "after": 0.5},
        ]
    )
    ax = fig.axes[0]
    assert "accuracy before and after training" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts) == ["0.0", "25.0", "50.0", "90.0"]
    assert [round(b.get_height(), 6) for b in ax.patches] == [0.0, 25.0, 90.0, 50.0]
