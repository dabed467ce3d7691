"""`mathforge demo`: the whole toolkit end to end on one CPU, with no network and no downloads.

1. synthesize two difficulty tiers of problems with the symbolic backend (deduplicated and
   decontaminated by the synthesis pipeline), and held-out problems from another seed, checked
   disjoint from the training problems;
2. train a byte-level BPE tokenizer on the training text;
3. train a small model from scratch in two stages (normal, then hard) with `mathforge.trainer`
   (packing, the fused cross-entropy path);
4. evaluate the initial and the trained model on the held-out problems and a GSM8K sample with
   `mathforge.evaluate.run_eval`;
5. write a report: a summary table, report.json / report.md, loss and accuracy plots.

Everything lands in the run folder; the checkpoints are Hugging Face folders.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError
from mathforge.synth.store import writable_folder, write_rows


@dataclass(frozen=True)
class Tier:
    """One difficulty tier = one training stage: the symbolic generator's settings, its share of the
    problems, its optimizer steps at full budget, and how many of the previous tier's problems it replays
    (without replay a stage-2 model forgets stage 1's format)."""

    name: str
    symbolic: dict[str, Any]  # the [symbolic] table of a synthesis config
    data_share: float
    steps: int
    replay: int = 0


@dataclass(frozen=True)
class Recipe:
    """What the demo trains on, sized for 2 CPU cores: fixed-width column arithmetic (3-digit, then 4-digit
    addition and subtraction, written one column per line) and a 0.9M-parameter Llama-style model. At full
    budget the two stages take about 4 minutes and reach about 99% on held-out problems."""

    tiers: tuple[Tier, ...] = (
        Tier("normal", {"arithmetic": "normal"}, 0.5, steps=700),
        Tier("hard", {"arithmetic": "hard"}, 0.5, steps=800, replay=3000),
    )
    train_items: int = 20_200  # a few exact duplicates are removed, leaving more than 20,000
    heldout_per_tier: int = 200
    gsm8k_sample: int = 20
    vocab_size: int = 300
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        }
    )
    template: str = "plain"
    lr: float = 1e-3
    micro_batch_tokens: int = 2048
    max_seq_len: int = 128
    max_new_tokens: int = 64
    seed: int = 0


def _synthesize(folder: Path, tier: Tier, items: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from mathforge.synth import config as synth_config
    from mathforge.synth.run import synthesize

    cfg = synth_config.load(
        data={
            "run": {"output": str(folder), "items": items, "seed": seed, "progress": False},
            "symbolic": tier.symbolic,
            "quality": {"near_dedup": False, "decontaminate": True},  # templated problems are near-duplicates by design
        }
    )
    manifest = synthesize(cfg)
    rows = []
    for info in manifest["files"].values():
        rows += [json.loads(line) for line in Path(info["path"]).read_text().splitlines() if line.strip()]
    return rows, {"rows": manifest["rows"], "filters": manifest["filters"]}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    write_rows(path, rows, "jsonl")
    return path


def _train_config(recipe: Recipe, out: Path, init: Path, tokenizer: Path, stages: list[dict[str, Any]], **train):
    from mathforge.trainer.config import config_from_dict

    return config_from_dict(
        {
            "run": {"out_dir": str(out), "seed": recipe.seed, "log_every": 5, "keep_last": 1, "tensorboard": False},
            "model": {"init": str(init)},
            "data": {"tokenizer": str(tokenizer), "template": recipe.template, "max_seq_len": recipe.max_seq_len},
            "optim": {
                "lr": recipe.lr,
                "warmup_ratio": 0.05,
                "min_lr_ratio": 0.0,
                "weight_decay": 0.0,
                "schedule": "cosine",
            },
            "train": {"micro_batch_tokens": recipe.micro_batch_tokens, "grad_accum": 1, **train},
            "stages": stages,
        },
        source="mathforge demo",
    )


def _evaluate(model: Path, benches: list[str], recipe: Recipe, out: Path) -> dict[str, Any]:
    from mathforge.evaluate import run_eval

    results = run_eval(
        model,
        bench=benches,
        prompt=recipe.template,
        max_new_tokens=recipe.max_new_tokens,
        out=out,
        fields={"subject": "tier"},
        show_progress=False,
        batch_size=64,
    )
    return results["benchmarks"]


def run_demo(
    minutes: float | None = None, out: str | Path = "runs/demo", recipe: Recipe | None = None
) -> dict[str, Any]:
    """Runs the demo and returns (and writes) the report. By default it trains the recipe's fixed steps, so
    its result depends on the seed, not on how busy the machine is; `minutes` caps the wall time instead
    (training gets fewer steps when the measured speed says the recipe will not fit, and the report says
    so loudly)."""
    out = check_arguments(minutes, out)
    import torch

    from mathforge.model import from_config
    from mathforge.trainer.checkpoint import latest_checkpoint
    from mathforge.trainer.tokenizer import train_bpe_tokenizer
    from mathforge.trainer.train import train

    recipe = recipe or Recipe()
    started = time.perf_counter()
    phases: dict[str, float] = {}
    report: dict[str, Any] = {"minutes": minutes, "recipe": asdict(recipe), "phases_s": phases}

    # 1. synthesize: training tiers from one seed, held-out problems from another
    tick = time.perf_counter()
    train_files, heldout_files, synth_info = {}, [], {}
    train_questions: set[str] = set()
    for i, tier in enumerate(recipe.tiers):
        rows, info = _synthesize(
            out / "synth" / tier.name, tier, round(recipe.train_items * tier.data_share), recipe.seed + i
        )
        train_files[tier.name] = _write_jsonl(out / "data" / f"train-{tier.name}.jsonl", rows)
        train_questions |= {r["prompt"] for r in rows}
        synth_info[tier.name] = info
    held_out_overlap = 0
    for i, tier in enumerate(recipe.tiers):
        rows, info = _synthesize(out / "synth" / f"heldout-{tier.name}", tier, recipe.heldout_per_tier * 2, 10_000 + i)
        fresh = [r for r in rows if r["prompt"] not in train_questions]
        held_out_overlap += len(rows) - len(fresh)
        heldout = [
            {"question": r["prompt"], "answer": r["meta"]["answer"], "tier": tier.name}
            for r in fresh[: recipe.heldout_per_tier]
        ]
        heldout_files.append(str(_write_jsonl(out / "data" / f"heldout-{tier.name}.jsonl", heldout)))
    gsm8k = out / "data" / "gsm8k-sample.jsonl"
    from mathforge.evaluate import datasets

    _write_jsonl(
        gsm8k,
        [
            {"question": r["question"], "answer": r["answer"], "tier": "gsm8k"}
            for r in datasets.load("gsm8k", "test")[: recipe.gsm8k_sample]
        ],
    )
    report["data"] = {
        "tiers": synth_info,
        "train_rows": sum(v["rows"] for v in synth_info.values()),
        "heldout_rows": recipe.heldout_per_tier * len(recipe.tiers),
        "heldout_dropped_as_seen_in_training": held_out_overlap,
    }
    phases["synthesize"] = time.perf_counter() - tick

    # 2. tokenizer
    tick = time.perf_counter()
    texts = [json.loads(line) for f in train_files.values() for line in f.read_text().splitlines()]
    tokenizer = train_bpe_tokenizer(
        (r["prompt"] + "\n" + r["response"] for r in texts), recipe.vocab_size, out / "tokenizer"
    )
    phases["tokenizer"] = time.perf_counter() - tick

    # 3. the initial model (what "before" evaluates and training starts from)
    torch.manual_seed(recipe.seed)
    init = out / "model-init"
    model = from_config(
        {
            "preset": "tiny",
            **recipe.model,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)
    report["model"] = {"parameters": model.num_parameters(), **recipe.model, "vocab_size": len(tokenizer)}

    # 4. evaluate before training
    tick = time.perf_counter()
    benches = [*heldout_files, str(gsm8k)]
    before = _evaluate(init, benches, recipe, out / "eval-before")
    phases["evaluate_before"] = time.perf_counter() - tick

    # 5. train: a short probe measures tokens/s (for the time estimate, and for the cap when --minutes is given)
    tick = time.perf_counter()
    stage_rows = [{"name": t.name, "data": [str(train_files[t.name])], "steps": 4} for t in recipe.tiers[:1]]
    probe = train(
        _train_config(recipe, out / "probe", init, out / "tokenizer", stage_rows, max_steps=4), progress=False
    )
    tokens_per_s = probe["stages"][0]["tokens_per_s"]
    planned = sum(t.steps for t in recipe.tiers)
    full_s = planned * recipe.micro_batch_tokens / tokens_per_s
    print(f"this machine trains at ~{tokens_per_s:,.0f} tokens/s: the recipe's {planned:,} steps take about "
          f"{full_s / 60:.1f} min")  # fmt: skip
    budget, scale = _training_budget(minutes, started, phases["evaluate_before"], full_s)
    stages = []
    for i, t in enumerate(recipe.tiers):
        data = [str(train_files[t.name])]
        if t.replay and i > 0:
            previous = train_files[recipe.tiers[i - 1].name].read_text().splitlines()[: t.replay]
            data.append(str(_write_jsonl(out / "data" / f"replay-{t.name}.jsonl", [json.loads(r) for r in previous])))
        stages.append({"name": t.name, "data": data, "steps": max(5, int(t.steps * scale))})
    # under --minutes, a machine slower than the probe said stops at 1.25x the budget, keeping what it learned
    limit = 1.25 * budget if budget is not None else 0.0
    config = _train_config(recipe, out / "train", init, out / "tokenizer", stages, time_limit_s=limit)
    summary = train(config, progress=True)
    phases["train"] = time.perf_counter() - tick
    trained_steps = sum(s["steps"] for s in summary["stages"])
    report["training"] = {
        "probe_tokens_per_s": tokens_per_s,
        "budget_s": budget,
        "step_scale": scale,
        "planned_steps": planned,
        "trained_steps": trained_steps,
        "short_of_recipe": trained_steps < planned,
        "stages": summary["stages"],
        "stopped_early": summary["stopped"],
    }
    if trained_steps < planned:
        print(f"WARNING: {_short_note(report['training'], minutes)}")
    trained = Path(summary["final_model"]) if summary.get("final_model") else latest_checkpoint(out / "train") / "model"

    # 6. evaluate after training, then report
    tick = time.perf_counter()
    after = _evaluate(trained, benches, recipe, out / "eval-after")
    phases["evaluate_after"] = time.perf_counter() - tick
    report["accuracy"] = _accuracy_table(before, after)
    phases["total"] = time.perf_counter() - started
    _write_report(out, report)
    return report


def _training_budget(
    minutes: float | None, started: float, evaluate_s: float, full_s: float
) -> tuple[float | None, float]:
    """(seconds training may take, share of the recipe's steps): (None, 1.0) without a cap. With one, what is
    left after training (evaluating again, at most as long as before, and the report) comes off the cap."""
    if minutes is None:
        return None, 1.0
    budget = max(20.0, minutes * 60 - (time.perf_counter() - started) - evaluate_s - 10)
    return budget, min(1.0, budget / full_s)


def _short_note(training: dict[str, Any], minutes: float | None) -> str:
    why = f"--minutes {minutes:g} cap" if minutes is not None else "the run stopped early"
    return (
        f"trained {training['trained_steps']:,} of {training['planned_steps']:,} planned steps ({why}); "
        "accuracy will be low. Run without --minutes to train the whole recipe."
    )


def check_arguments(minutes: float | None, out: str | Path) -> Path:
    """The run folder, created and checked writable, once `minutes` and `out` are fit to start: ConfigError naming
    the flag and its value otherwise (before any work, so a typo costs seconds, not a run)."""
    if minutes is not None and not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--minutes {minutes}: must be a positive number of minutes, e.g. --minutes 10")
    out = Path(out)
    if not str(out).strip() or str(out) == ".":
        raise ConfigError(f"--out {str(out)!r}: name a new folder for the demo run, e.g. --out runs/demo")
    if (out / "report.json").exists() or (out / "train").exists():
        raise ConfigError(f"--out {out}: already holds a demo run; pass another --out or remove it")
    return writable_folder(out, "--out")


def _accuracy_table(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in after:
        rows.append(
            {
                "set": key,
                "count": after[key]["count"],
                "before": before[key]["accuracy_lenient"],
                "after": after[key]["accuracy_lenient"],
                "after_strict": after[key]["accuracy_strict"],
            }
        )
    count = sum(r["count"] for r in rows if r["set"].startswith("heldout"))
    if count:
        rows.append(
            {
                "set": "heldout (all tiers)",
                "count": count,
                "before": sum(r["before"] * r["count"] for r in rows if r["set"].startswith("heldout")) / count,
                "after": sum(r["after"] * r["count"] for r in rows if r["set"].startswith("heldout")) / count,
                "after_strict": sum(r["after_strict"] * r["count"] for r in rows if r["set"].startswith("heldout"))
                / count,
            }
        )
    return rows


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from mathforge.trainer.metrics import plot_run

    plots = [str(p) for p in plot_run(out / "train")]
    plots.append(str(_plot_accuracy(out, report["accuracy"])))
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(report))


def _plot_accuracy(out: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib.pyplot as plt

    fig = accuracy_figure(rows)
    path = out / "accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_figure(rows: list[dict[str, Any]]):
    """accuracy.png: before/after bars per evaluation set, each labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['set']}\n(n={r['count']})" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    for shift, key, label in ((-0.2, "before", "before training"), (0.2, "after", "after training")):
        bars = ax.bar([i + shift for i in x], [100 * r[key] for r in rows], width=0.4, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize="small", padding=2)
    ax.set_xticks(list(x), names, rotation=15)
    ax.set_ylabel("accuracy % (lenient)")
    ax.set_ylim(0, 110)  # room for the labels over 100% bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("mathforge demo: accuracy before and after training (greedy decoding)", pad=28)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def render_markdown(report: dict[str, Any]) -> str:
    training = report["training"]
    lines = ["# mathforge demo", ""]
    if training.get("short_of_recipe"):
        lines += [f"> **Warning: {_short_note(training, report.get('minutes'))}**", ""]
    lines += [
        f"Trained {training.get('trained_steps', 0):,} of {training.get('planned_steps', 0):,} planned steps; "
        f"this machine measured {training['probe_tokens_per_s']:,.0f} tokens/s before training.",
        "",
        "| set | problems | before | after | after (strict) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["accuracy"]:
        lines.append(f"| {r['set']} | {r['count']} | {r['before']:.1%} | {r['after']:.1%} | {r['after_strict']:.1%} |")
    lines += [
        "",
        "| stage | steps | final loss | tokens | tokens/s | packing efficiency |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["training"]["stages"]:
        lines.append(
            f"| {s['name']} | {s['steps']} | {s['final_loss']:.3f} | {s['tokens']:,} | "
            f"{s['tokens_per_s'] or 0:,.0f} | {s['packing_efficiency']:.1%} |"
        )
    lines += ["", "| phase | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in report["phases_s"].items()]
    data = report["data"]
    lines += [
        "",
        f"Training problems: {data['train_rows']:,}; held-out: {data['heldout_rows']} "
        f"({data['heldout_dropped_as_seen_in_training']} candidates dropped because they appear in training).",
    ]
    return "\n".join(lines) + "\n"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    accuracy = Table(title="accuracy before → after training (greedy, graded by mathforge.evaluate.grade)")
    for column in ("set", "problems", "before", "after", "after (strict)"):
        accuracy.add_column(column, justify="left" if column == "set" else "right")
    for r in report["accuracy"]:
        accuracy.add_row(
            r["set"], str(r["count"]), f"{r['before']:.1%}", f"{r['after']:.1%}", f"{r['after_strict']:.1%}"
        )
    console.print(accuracy)
    training = Table(title="training (two stages, packed micro-batches, fused linear cross-entropy)")
    for column in ("stage", "steps", "final loss", "tokens", "tokens/s", "packing efficiency"):
        training.add_column(column, justify="left" if column == "stage" else "right")
    for s in report["training"]["stages"]:
        training.add_row(
            s["name"],
            str(s["steps"]),
            f"{s['final_loss']:.4f}",
            f"{s['tokens']:,}",
            f"{s['tokens_per_s'] or 0:,.0f}",
            f"{s['packing_efficiency']:.1%}",
        )
    console.print(training)
    phases = Table(title="wall time per phase")
    phases.add_column("phase")
    phases.add_column("seconds", justify="right")
    for name, seconds in report["phases_s"].items():
        phases.add_row(name, f"{seconds:.1f}")
    console.print(phases)
    if report["training"].get("short_of_recipe"):
        console.print(f"[bold red]WARNING: {_short_note(report['training'], report.get('minutes'))}[/]")
