"""Gradient-based influence features (LESS, Xia et al. 2024), the selection step of JiuZhang3.0.

An example's feature is the gradient of its training loss (mean over its predicted tokens) with respect to a
parameter subset, optionally turned into Adam's update direction by the warm-up's moments, then projected to
`dim` dimensions by a sparse random sign projection; a candidate's score is its cosine similarity to the
target set's features (mean, or max over k-means clusters of the targets).

    subset = PARAM_SUBSETS.get("lora")(model, cfg.gradients, seed)   # the Linear layers whose weights count
    feats = Featurizer(model, subset, SparseProjection(8192, 4, seed)).features(batch)   # [B, 8192] fp32

Per-example gradients of a linear layer come from ONE forward and ONE backward over the packed batch
(documents never attend to each other, so d(sum of per-example losses)/d(output at token t) is the gradient
of t's own example): W's gradient for example n is sum over its tokens of g_t x_tᵀ (the outer-product trick),
a batched matmul over the padded [B, S, ·] activations. Only `nn.Linear` weights and biases of the subset
count (norm scales are left out: a few thousand numbers beside millions).

The projection never exists as a matrix: input coordinate j (counted over the whole subset, in a fixed order)
goes to `nonzeros` buckets with random signs, both from an integer hash of (seed, j, copy) computed on the fly
in torch — the same numbers on every device, run and sharding (a sparse Johnson–Lindenstrauss transform).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathforge.errors import ConfigError
from mathforge.registry import Registry

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}


# ---------------------------------------------------------------- examples and batches


@dataclass
class Example:
    """One tokenized example: its token ids and which of them are prompt (no loss is taken on predicting them)."""

    ids: list[int]
    prompt: int  # the first `prompt` tokens are the prompt


def encode(tokenizer: Any, text: str, response: str | None, max_tokens: int) -> Example:
    """A text (loss on every token) or a prompt/response pair (loss on the response and the end token)."""
    if response is None:
        return Example(tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens], 0)
    prompt = tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
    reply = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        reply = [*reply, tokenizer.eos_token_id]
    ids = (prompt + reply)[:max_tokens]
    return Example(ids, min(len(prompt), len(ids)))


def trainable(example: Example) -> bool:
    """Whether the example predicts at least one token (else it has no loss and no gradient)."""
    return len(example.ids) - max(example.prompt, 1) >= 1


@dataclass
class Batch:
    """Examples packed into one token stream (as the trainer does), with per-token loss weights that make the
    summed loss the sum of per-example mean losses."""

    input_ids: torch.Tensor  # [T]
    cu_seqlens: torch.Tensor  # [B+1] int32
    labels: torch.Tensor  # [T]
    weights: torch.Tensor  # [T]: 1 / (the example's predicted tokens), 0 where nothing is predicted
    max_seqlen: int

    @property
    def size(self) -> int:
        return self.cu_seqlens.numel() - 1


def collate(examples: Sequence[Example], device: torch.device | str = "cpu") -> Batch:
    from mathforge.model import shift_labels

    lengths = torch.tensor([len(e.ids) for e in examples])
    ids = torch.tensor([t for e in examples for t in e.ids], dtype=torch.long)
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    prompt = torch.cat([torch.arange(len(e.ids)) < e.prompt for e in examples])
    labels = shift_labels(ids, cu, prompt)
    doc = torch.repeat_interleave(torch.arange(len(examples)), lengths)
    counts = torch.zeros(len(examples)).index_add_(0, doc, (labels != -100).float())
    if bool((counts == 0).any()):
        raise ValueError("an example in the batch predicts no token (filter with `trainable`)")
    weights = (labels != -100).float() / counts[doc]
    return Batch(ids.to(device), cu.to(device), labels.to(device), weights.to(device), int(lengths.max()))


def batch_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Sum over the batch of each example's mean token loss (fp32 scalar)."""
    hidden = model(batch.input_ids, cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen)
    per_token = model.loss(hidden, batch.labels, reduction="none")
    return (per_token.float() * batch.weights).sum()


# ---------------------------------------------------------------- parameter subsets


class LoRA(nn.Module):
    """A frozen linear layer plus a low-rank adapter: base(x) + (alpha / r) · B(A(x)), B zero at init."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(base.in_features, rank, **kw)
        self.lora_B = nn.Linear(rank, base.out_features, **kw)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(base.in_features)
            a = torch.rand(self.lora_A.weight.shape, generator=generator, dtype=torch.float64) * 2 * bound - bound
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


PARAM_SUBSETS: Registry[Callable[[nn.Module, Any, int], list[tuple[str, nn.Linear]]]] = Registry("parameter subset")


@PARAM_SUBSETS.register("lora")
def lora_subset(model: nn.Module, settings: Any, seed: int) -> list[tuple[str, nn.Linear]]:
    """LoRA adapters (rank `lora_rank`) on `lora_modules` of every block; the base model is frozen."""
    generator = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    out = []
    for i, block in enumerate(model.layers):
        for name in settings.lora_modules:
            parent = block.self_attn if name in _ATTN else block.mlp
            adapter = LoRA(getattr(parent, name), settings.lora_rank, settings.lora_alpha, generator)
            setattr(parent, name, adapter)
            part = "self_attn" if name in _ATTN else "mlp"
            out += [
                (f"layers.{i}.{part}.{name}.lora_A", adapter.lora_A),
                (f"layers.{i}.{part}.{name}.lora_B", adapter.lora_B),
            ]
    for _, layer in out:
        layer.requires_grad_(True)
    return out


@PARAM_SUBSETS.register("last_blocks")
def last_blocks_subset(model: nn.Module, settings: Any, seed: int) -> list[tuple[str, nn.Linear]]:
    """Every linear layer (weights and biases) of the last `last_blocks` blocks; the rest is frozen."""
    layers = model.layers
    if settings.last_blocks > len(layers):
        raise ConfigError(f"gradients.last_blocks = {settings.last_blocks}: the model has only {len(layers)} blocks")
    model.requires_grad_(False)
    first = len(layers) - settings.last_blocks
    out = [
        (f"layers.{first + i}.{name}", module)
        for i, block in enumerate(layers[first:])
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]
    for _, layer in out:
        layer.requires_grad_(True)
    return out


def parameters(subset: list[tuple[str, nn.Linear]]) -> list[tuple[str, nn.Parameter]]:
    """The subset's parameters in the fixed order the features use (weight, then bias, layer by layer)."""
    out = []
    for name, layer in subset:
        out.append((f"{name}.weight", layer.weight))
        if layer.bias is not None:
            out.append((f"{name}.bias", layer.bias))
    return out


# ---------------------------------------------------------------- per-example gradients


def per_example_grads(model: nn.Module, subset: list[tuple[str, nn.Linear]], batch: Batch) -> Iterator[torch.Tensor]:
    """Each subset parameter's per-example gradients [B, numel] (fp32 or wider; the order of `parameters`), from one
    forward and one backward over the packed batch (see the module docstring)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(module, inputs, output):
        seen.append((inputs[0].detach(), output))

    hooks = [layer.register_forward_hook(keep) for _, layer in subset]
    try:
        with torch.enable_grad():
            loss = batch_loss(model, batch)
            grads = torch.autograd.grad(loss, [out for _, out in seen], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
    if len(seen) != len(subset):
        raise RuntimeError(f"expected one call of each of {len(subset)} layers, saw {len(seen)}")
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()
    doc = torch.repeat_interleave(torch.arange(batch.size, device=lengths.device), lengths)
    pos = torch.arange(doc.numel(), device=lengths.device) - batch.cu_seqlens[:-1].long()[doc]
    for (_, layer), (x, _), g in zip(subset, seen, grads):
        if g is None:  # the layer does not reach the loss
            g = torch.zeros(x.shape[0], layer.out_features, dtype=x.dtype, device=x.device)
        wide = torch.promote_types(x.dtype, torch.float32)  # bf16 activations: outer products in fp32
        xs = _padded(x.to(wide), doc, pos, batch.size, batch.max_seqlen)
        gs = _padded(g.to(wide), doc, pos, batch.size, batch.max_seqlen)
        yield torch.bmm(gs.transpose(1, 2), xs).reshape(batch.size, -1)  # [B, out * in]
        if layer.bias is not None:
            yield gs.sum(dim=1)


def _padded(x: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    out = x.new_zeros(rows, width, x.shape[-1])
    out[doc, pos] = x
    return out


# ---------------------------------------------------------------- the projection


_MASK31 = (1 << 31) - 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """An integer hash on int64 tensors holding 31-bit values (products stay below 2^63: no overflow)."""
    for _ in range(3):
        x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK31
    return (x >> 16) ^ x


class SparseProjection:
    """x ∈ R^D → R^dim: coordinate j adds sign(j, c) · x_j / √nonzeros to bucket(j, c) for c < nonzeros, both
    hashed from (seed, j, c). Inner products are preserved in expectation with the variance of a dense
    Gaussian projection of the same `dim` (sparse JL); nothing of size D × dim is ever stored."""

    def __init__(self, dim: int, nonzeros: int, seed: int) -> None:
        self.dim, self.nonzeros, self.seed = dim, nonzeros, seed

    def codes(self, start: int, count: int, device: torch.device | str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For coordinates start..start+count: (bucket [count] long, sign [count] ±1 float) per copy."""
        j = torch.arange(start, start + count, dtype=torch.int64, device=device)
        lo, hi = j & _MASK31, j >> 31
        out = []
        for c in range(self.nonzeros):
            key = _mix(torch.tensor((self.seed * 1_000_003 + c * 7919) & _MASK31, dtype=torch.int64, device=device))
            h = _mix((_mix(lo ^ key) + hi) & _MASK31)
            out.append((h % self.dim, (h >> 30 & 1).float() * 2 - 1))
        return out

    def project(self, pieces: Iterator[torch.Tensor], rows: int, device: torch.device | str) -> torch.Tensor:
        """The projection [rows, dim] of the concatenation of `pieces` ([rows, numel] each), piece by piece."""
        out = torch.zeros(rows, self.dim, dtype=torch.float32, device=device)
        start = 0
        for piece in pieces:
            self.add(out, piece, start)
            start += piece.shape[1]
        return out

    def add(self, out: torch.Tensor, piece: torch.Tensor, start: int) -> None:
        """out += projection of `piece`, whose columns are coordinates start..start+piece.shape[1]."""
        scale = 1.0 / math.sqrt(self.nonzeros)
        for bucket, sign in self.codes(start, piece.shape[1], piece.device):
            out.index_add_(1, bucket, piece.float() * (sign * scale))


# ---------------------------------------------------------------- features


@dataclass
class AdamState:
    """The warm-up's Adam moments per subset parameter (flattened, fp32), as LESS normalises with them."""

    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def update(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """Adam's update direction had this per-example gradient been the next step's [B, numel]."""
        m = self.beta1 * self.exp_avg[i] + (1 - self.beta1) * g
        v = self.beta2 * self.exp_avg_sq[i] + (1 - self.beta2) * g * g
        return m / (v.sqrt() + self.eps)


class Featurizer:
    """Batches of examples → projected gradient features [B, dim] (fp32), Adam-normalised when asked."""

    def __init__(self, model: nn.Module, subset: list[tuple[str, nn.Linear]], projection: SparseProjection) -> None:
        self.model, self.subset, self.projection = model, subset, projection
        self.device = next(model.parameters()).device
        self.numel = sum(p.numel() for _, p in parameters(subset))

    def features(self, batch: Batch, adam: AdamState | None = None) -> torch.Tensor:
        pieces = per_example_grads(self.model, self.subset, batch)
        if adam is not None:
            pieces = (adam.update(i, g) for i, g in enumerate(pieces))
        return self.projection.project(pieces, batch.size, self.device)


def warmup(
    model: nn.Module, subset: list[tuple[str, nn.Linear]], batches: Iterator[Batch], steps: int, lr: float
) -> AdamState:
    """`steps` AdamW steps on the subset (LESS's warm-up); returns the optimizer's moments for normalising."""
    params = [p for _, p in parameters(subset)]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _, batch in zip(range(steps), batches):
        optim.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch) / batch.size
        loss.backward()
        optim.step()
    model.eval()
    state = [optim.state[p] for p in params]
    return AdamState(
        [s["exp_avg"].float().flatten() for s in state], [s["exp_avg_sq"].float().flatten() for s in state]
    )


# ---------------------------------------------------------------- scores


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def centroids(target: torch.Tensor, clusters: int, seed: int, iters: int = 25) -> torch.Tensor:
    """[k, dim]: the mean unit target feature of each of k spherical k-means clusters (k = 1: of all), so
    that a candidate's dot product with a centroid is its mean cosine to that cluster's targets."""
    points = unit(target.float())
    k = min(clusters, points.shape[0])
    if k == 1:
        return points.mean(dim=0, keepdim=True)
    generator = torch.Generator().manual_seed(seed)
    centers = points[torch.randperm(points.shape[0], generator=generator)[:k].to(points.device)]
    for _ in range(iters):
        assign = (points @ centers.T).argmax(dim=1)
        for c in range(k):
            members = points[assign == c]
            if members.shape[0]:
                centers[c] = unit(members.mean(dim=0))
    assign = (points @ centers.T).argmax(dim=1)
    return torch.stack([points[assign == c].mean(dim=0) for c in range(k) if bool((assign == c).any())])


def scores(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Each candidate's max over clusters of its mean cosine similarity to the cluster's targets."""
    return (unit(features.float()) @ centers.T).max(dim=1).values


# ---------------------------------------------------------------- target sets


@dataclass(frozen=True)
class BuiltinTarget:
    """A vendored target set: a built-in seed source of `synth/seeds.py` (`SEED_SOURCES`: the data set, its
    split and the evaluation sets it is drawn from) and the fields of its prompt and worked solution."""

    source: str
    prompt: str
    response: str


TARGET_SETS: Registry[BuiltinTarget] = Registry("target set")
TARGET_SETS.add("gsm8k", BuiltinTarget("gsm8k", "question", "answer"))  # GSM8K train (7,473)
# MATH test minus MATH-500 (4,500): a TEST split, refused unless target.allow_test_split = true
TARGET_SETS.add("math", BuiltinTarget("math", "problem", "solution"))
