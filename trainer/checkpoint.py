"""Checkpoints written atomically: a `.partial` folder renamed into place once complete.

    <run>/checkpoints/step-00000120/
        model/               Hugging Face folder (config, safetensors, tokenizer): loads in transformers/vLLM
        optimizer.pt         full optimizer state (keyed by parameter name)
        trainer_state.json   stage, step within the stage, global step, tokens seen, elapsed time, the
                             summaries of the stages already done
        config.json          the run's resolved config: a resume with other settings is refused
        rng-rank<r>.pt       every rank's torch / CUDA / numpy / python RNG states

Resuming restores all of it, so a run killed at any point continues bit-identically from the last
checkpoint (on CPU; CUDA kernels may be non-deterministic).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from mathforge.errors import DataError


@dataclass
class TrainerState:
    stage: int = 0  # index of the stage in progress
    stage_step: int = 0  # optimizer steps completed in that stage
    global_step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    finished: bool = False
    stages: list[dict[str, Any]] = field(default_factory=list)  # summaries of the finished stages
    stage_tokens: int = 0  # tokens and timed seconds of the stage in progress, for its throughput
    stage_seconds: float = 0.0


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(
    run_dir: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    tokenizer: Any,
    keep_last: int,
    config: dict[str, Any] | None = None,
    template: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint of the current step (call on every rank) and prunes all but the last `keep_last`.
    `module` is what the optimizer was built on; `module.model` is the Transformer; `config` (the run's resolved
    config) is stored beside the state so that a resume can check it continues the same run."""
    root = run_dir / "checkpoints"
    final = root / f"step-{state.global_step:08d}"
    partial = root / f".step-{state.global_step:08d}.partial"
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    torch.save(rng_state(), partial / f"rng-rank{_rank()}.pt")
    weights = module.model.hf_state_dict()  # collective under FSDP
    optim_state = get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if _rank() == 0:
        save_model_folder(module.model, partial / "model", tokenizer, weights, template, provenance)
        torch.save(optim_state, partial / "optimizer.pt")
        (partial / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2, default=str) + "\n")
        if config is not None:
            (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _barrier()
    if _rank() == 0:
        _fsync_tree(partial)
        if final.exists():  # a re-save of the same step (e.g. the end of a stage right after a periodic save)
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in sorted(root.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old)
    _barrier()
    return final


TRAINING_INFO = "mathforge.json"  # beside a saved model: how it was trained ({"template": ...}); eval reads it


def save_model_folder(
    model: torch.nn.Module,
    folder: Path,
    tokenizer: Any,
    weights: dict | None = None,
    template: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """A Hugging Face folder with the model (its own dtype) and the tokenizer (rank 0 only under FSDP;
    pass `weights` from `model.hf_state_dict()` gathered on every rank), and `mathforge.json` naming the
    training `template`, so `mathforge eval` prompts the model in the layout it was trained on, and the
    data's `provenance` (`mathforge.datasources.data_provenance`: synth manifests, evaluation sets that
    seeded them), so `mathforge eval` refuses a benchmark the training data was seeded from."""
    model.save_pretrained(folder, state=weights)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    info = {"template": template} if template is not None else {}
    info.update(provenance or {})
    if info:
        (Path(folder) / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = sorted((run_dir / "checkpoints").glob("step-*"))
    return steps[-1] if steps else None


def load_trainer_state(checkpoint: Path) -> TrainerState:
    file = checkpoint / "trainer_state.json"
    try:
        return TrainerState(**json.loads(file.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise DataError(f"{file}: unreadable trainer state ({error})") from None


def restore(checkpoint: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Loads optimizer state and this rank's RNG states (the weights come from `checkpoint/model`)."""
    optim_state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
    set_optimizer_state_dict(module, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    rng_file = checkpoint / f"rng-rank{_rank()}.pt"
    if not rng_file.exists():
        raise DataError(f"{rng_file}: missing; resume with the same number of processes as the run that saved it")
    set_rng_state(torch.load(rng_file, weights_only=False))


# What a training run writes into its folder (the tokenized-data cache is not among them: it is keyed by its
# inputs and reused by any run).
RUN_OUTPUTS = (
    "checkpoints",
    "final",
    "metrics.jsonl",
    "summary.json",
    "config.json",
    "tensorboard",
    "loss.png",
    "throughput.png",
)


def run_outputs(run_dir: Path) -> list[Path]:
    """The outputs of an earlier run in `run_dir` (empty when there is none)."""
    return [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def describe_output(path: Path) -> str:
    """How an output is named in messages: "checkpoints/ (2 checkpoints)", "metrics.jsonl (40 records)"."""
    if path.name == "checkpoints":
        count = len(list(path.glob("step-*")))
        return f"checkpoints/ ({count} checkpoint{'' if count == 1 else 's'})"
    if path.name == "metrics.jsonl":
        with path.open() as handle:
            count = sum(1 for line in handle if line.strip())
        return f"metrics.jsonl ({count} record{'' if count == 1 else 's'})"
    return f"{path.name}/" if path.is_dir() else path.name


def remove_outputs(run_dir: Path) -> list[str]:
    """Deletes an earlier run's outputs from `run_dir`; returns what was removed, as `describe_output` says it."""
    removed = []
    for path in run_outputs(run_dir):
        removed.append(describe_output(path))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def saved_config(checkpoint: Path, run_dir: Path) -> dict[str, Any] | None:
    """The config a checkpoint was written under (its own copy, else the run folder's config.json)."""
    for file in (checkpoint / "config.json", run_dir / "config.json"):
        if file.exists():
            try:
                return json.loads(file.read_text())
            except json.JSONDecodeError as error:
                raise DataError(f"{file}: unreadable config ({error})") from None
    return None
