"""Checkpoints written atomically: a `.partial` folder renamed into place once complete.

    <run>/checkpoints/step-00000120/
        model/               Hugging Face folder (config, safetensors, tokenizer): loads in transformers/vLLM
        optimizer.pt         full optimizer state (keyed by parameter name)
        trainer_state.json   stage, step within the stage, global step, tokens seen, elapsed time
        rng-rank<r>.pt       every rank's torch / CUDA / numpy / python RNG states

Resuming restores all of it, so a run killed at any point continues bit-identically from the last
checkpoint (on CPU; CUDA kernels may be non-deterministic).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
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
) -> Path:
    """Writes a checkpoint of the current step (call on every rank) and prunes all but the last `keep_last`.
    `module` is what the optimizer was built on; `module.model` is the Transformer."""
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
        save_model_folder(module.model, partial / "model", tokenizer, weights)
        torch.save(optim_state, partial / "optimizer.pt")
        (partial / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
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


def save_model_folder(model: torch.nn.Module, folder: Path, tokenizer: Any, weights: dict | None = None) -> None:
    """A Hugging Face folder with the model (its own dtype) and the tokenizer (rank 0 only under FSDP;
    pass `weights` from `model.hf_state_dict()` gathered on every rank)."""
    model.save_pretrained(folder, state=weights)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


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
