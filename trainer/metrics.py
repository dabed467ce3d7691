"""Training metrics: MFU against a peak table, throughput between syncs, a JSONL log (+ TensorBoard when
installed), and plots."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
]


def peak_tflops(device_name: str | None = None, override: float = 0.0) -> float | None:
    """The bf16 peak of the GPU (None on CPU or an unknown GPU, unless `override` is set)."""
    if override > 0:
        return override
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def mfu(flops: float, seconds: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all GPUs."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12 * world_size)


class Throughput:
    """Tokens, FLOPs and seconds of a stage's steps, between logging steps and in total.

    The training loop syncs the device only when it logs or checkpoints, so one step's wall time would measure
    how fast the host queues work, not the work: time is taken over the span of steps between two syncs, from
    the start of the first step (so logging and checkpointing are not counted) to the sync that ends it."""

    def __init__(self, device: torch.device, stage_tokens: int = 0, stage_seconds: float = 0.0) -> None:
        self.device = device
        self._tick: float | None = None
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0  # since the last logging step
        self.stage_tokens, self.stage_seconds = stage_tokens, stage_seconds  # a resumed stage starts from its own
        self.tokens_per_s = 0.0  # of the last interval
        self.loss = float("nan")  # the last logged loss

    def start(self) -> None:
        """Starts timing at the start of a step, unless a span is already running."""
        if self._tick is None:
            self._tick = time.perf_counter()

    def add(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    def pause(self) -> None:
        """Ends the running span once the device has finished its work (a sync)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self._tick is not None:
            self.seconds += time.perf_counter() - self._tick
            self._tick = None

    def interval(self) -> tuple[int, float, float]:
        """(tokens, FLOPs, seconds) since the previous call, added to the stage's totals; starts a new interval."""
        self.pause()
        tokens, flops, seconds = self.tokens, self.flops, self.seconds
        self.stage_tokens += tokens
        self.stage_seconds += seconds
        self.tokens_per_s = tokens / seconds if seconds > 0 else 0.0
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0
        return tokens, flops, seconds

    @property
    def stage_tokens_per_s(self) -> float | None:
        return self.stage_tokens / self.stage_seconds if self.stage_seconds else None

    def stage_totals(self) -> tuple[int, float]:
        """(tokens, seconds) of the stage so far, the interval not yet logged included (for a checkpoint)."""
        self.pause()
        return self.stage_tokens + self.tokens, self.stage_seconds + self.seconds


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl`; mirrors scalars to TensorBoard if it is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print(
                    "warning: [run] tensorboard = true but tensorboard is not installed; metrics go to "
                    f"{self.path} only (pip install tensorboard, or set run.tensorboard = false)",
                    file=sys.stderr,
                )

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, record["global_step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def trim_metrics(run_dir: Path, global_step: int) -> int:
    """Drops the records of `metrics.jsonl` past `global_step` (steps a resumed run is about to redo, logged
    by a process that died after its last checkpoint); returns how many were dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("global_step", 0) <= global_step]
    if len(kept) < len(lines):
        partial = path.with_suffix(".jsonl.partial")
        partial.write_text("".join(line + "\n" for line in kept))
        partial.replace(path)
    return len(lines) - len(kept)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        from mathforge.errors import DataError

        raise DataError(f"{path}: not found (is {run_dir} a training run folder?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ema(values: list[float], alpha: float | None = None) -> list[float]:
    """Exponential moving average (first value as the start): the trend through a noisy loss curve. The default
    `alpha` spans about a twentieth of the points, so a short run's trend does not lag behind its loss."""
    if alpha is None:
        alpha = 2 / (max(2, len(values) // 20) + 1)
    out: list[float] = []
    for v in values:
        out.append(v if not out else alpha * v + (1 - alpha) * out[-1])
    return out


def loss_figure(records: list[dict[str, Any]]):
    """The loss.png figure: raw loss (faint) with its EMA on top, on a log axis when every loss is positive,
    above the learning rate; one colour per stage; a stage with a single logged step is drawn as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for i, stage in enumerate(dict.fromkeys(r["stage"] for r in records)):
        rows = [r for r in records if r["stage"] == stage]
        steps, loss = [r["global_step"] for r in rows], [r["loss"] for r in rows]
        colour, marker = f"C{i}", "o" if len(rows) == 1 else None
        ax_loss.plot(steps, loss, color=colour, alpha=0.35, linewidth=1, marker=marker, label=f"{stage} (raw)")
        ax_loss.plot(steps, ema(loss), color=colour, linewidth=2, marker=marker, label=f"{stage} (EMA)")
        ax_lr.plot(steps, [r["lr"] for r in rows], color=colour, marker=marker, label=stage)
    if records and all(r["loss"] > 0 for r in records):
        from matplotlib.ticker import FormatStrFormatter

        ax_loss.set_yscale("log")
        for axis_format in (ax_loss.yaxis.set_major_formatter, ax_loss.yaxis.set_minor_formatter):
            axis_format(FormatStrFormatter("%g"))  # 0.4, 2, 6 rather than 4x10^-1
    ax_loss.set_ylabel("loss per target token" + (" (log)" if ax_loss.get_yscale() == "log" else ""))
    ax_loss.set_title(f"training loss ({len(records)} logged steps)")
    ax_loss.legend(fontsize="small")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def throughput_figure(records: list[dict[str, Any]]):
    """The throughput.png figure: tokens/s by step and, on a GPU with a known peak, MFU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    steps = [r["global_step"] for r in records]
    marker = "o" if len(records) == 1 else None
    ax.plot(steps, [r["tokens_per_s"] for r in records], color="tab:blue", marker=marker)
    ax.set_ylabel("tokens/s", color="tab:blue")
    ax.set_xlabel("optimizer step")
    if any(r.get("mfu") is not None for r in records):
        twin = ax.twinx()
        twin.plot(steps, [100 * (r.get("mfu") or 0) for r in records], color="tab:orange", marker=marker)
        twin.set_ylabel("MFU %", color="tab:orange")
    fig.tight_layout()
    return fig


def plot_run(run_dir: Path) -> list[Path]:
    """loss.png (loss and learning rate by step, one colour per stage) and throughput.png (tokens/s, MFU)."""
    import matplotlib.pyplot as plt

    from mathforge.errors import DataError

    run_dir = Path(run_dir)
    records = [r for r in read_metrics(run_dir) if "loss" in r]
    if not records:
        raise DataError(f"{run_dir / 'metrics.jsonl'}: no logged training steps yet (no line has a loss)")
    outputs = []
    for name, make in (("loss.png", loss_figure), ("throughput.png", throughput_figure)):
        fig = make(records)
        try:
            fig.savefig(run_dir / name, dpi=120)
        except OSError as error:
            raise DataError(f"{run_dir / name}: cannot write the plot ({error.strerror or error})") from None
        finally:
            plt.close(fig)
        outputs.append(run_dir / name)
    return outputs
