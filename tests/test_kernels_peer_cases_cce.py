"""Cut Cross-Entropy's own test cases (apple/ml-cross-entropy), ported as data
(tests/cases/peers/cce_linear_cross_entropy.jsonl), run on mathforge's fused linear cross-entropy
(`fused_linear_cross_entropy_triton`, under TRITON_INTERPRET=1 on CPU) with CCE's criterion.

CCE's criterion is not allclose: against a ground truth computed from the same inputs upcast to fp32 (`gt`), the
implementation's elementwise error must not exceed torch's own error in the dtype (`ref`) plus `error_tol`:
|gt - ours| <= |gt - ref| + error_tol at every element (losses for test_loss_forward, the gradients of e and c
for test_loss_backward). The differences are taken in float64.

Our op has no `shift` and no `impl`: the caller shifts (e[:, :-s] against targets[:, s:], flattened) and CCE's
one implementation without gradient filtering is ours; the other impls are `unsupported` (skipped, counted).
On CPU a case runs its `cpu_shape` (fewer rows, V and D kept); on CUDA the peer's shape.
`test_summary` prints the counts and checks them against the CCE table of tests/cases/peers/README.md.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from _peer_cases import PEERS, case_counts
from _peer_cases import readme_counts as _readme_counts

from mathforge.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy_triton

pytestmark = pytest.mark.peer_cases  # a GPU plan runs them at the peers' full shapes (bench.gpu_session)

DATA = PEERS / "cce_linear_cross_entropy.jsonl"
DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TESTS = ("test_loss_forward", "test_loss_backward", "test_loss_partials")
RESULTS: Counter = Counter()


def load_cases() -> list[dict]:
    """The cases of cce_linear_cross_entropy.jsonl, one dict a line."""
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


ALL_CASES = load_cases()


class PeerBoundExceeded(AssertionError):
    """Ours is further from CCE's fp32 ground truth than torch in the dtype plus error_tol (the peer's assert)."""


# ---------------------------------------------------------------- inputs, as the peer draws them


def _shape(case: dict) -> tuple[int, int, int]:
    """(N, V, D): the peer's on CUDA; on CPU the case's `cpu_shape` (ours: fewer rows, V and D kept)."""
    shape = case["shape"] if DEVICE.type == "cuda" or case["cpu_shape"] is None else case["cpu_shape"]
    return shape["N"], shape["V"], shape["D"]


def _inputs(case: dict) -> dict[str, torch.Tensor | None]:
    """e [4, N/4, D] = randn / sqrt(D), c [V, D] = randn with c[:min(N, V)//2] = e[:min(N, V)//2], bias = randn
    * 0.02 (when the case has one), targets [4, N/4] = randint(0, V) with 20% set to -100 ("invalids"); drawn in
    the peer's order, in the dtype, from a seeded CPU generator (the same tensors on every machine)."""
    n, v, d = _shape(case)
    dtype, options = DTYPES[case["dtype"]], case["options"]
    gen = torch.Generator().manual_seed(2000 + case["seed"])
    e = torch.randn((n, d), generator=gen, dtype=dtype) / (d**0.5)
    c = torch.randn((v, d), generator=gen, dtype=dtype)
    half = min(n, v) // 2
    c[:half] = e[:half]
    bias = torch.randn(v, generator=gen, dtype=dtype) * 0.02 if options["bias"] else None
    targets = torch.randint(0, v, (n,), generator=gen)
    if options["invalids"]:
        targets[torch.randperm(n, generator=gen)[: int(0.2 * n)]] = options["ignore_index"]
    return {
        "e": e.view(4, -1, d).to(DEVICE),
        "c": c.to(DEVICE),
        "bias": None if bias is None else bias.to(DEVICE),
        "targets": targets.view(4, -1).to(DEVICE),
    }


def _flat(e: torch.Tensor, targets: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer's shift, on the caller's side: e[:, :-shift] against targets[:, shift:], flattened to rows."""
    if shift:
        e, targets = e[:, :-shift], targets[:, shift:]
    return e.flatten(0, -2), targets.flatten()


class _MatmulPrecision:
    """torch.set_float32_matmul_precision for a block, restored after (the peer sets it per computation)."""

    def __init__(self, precision: str):
        self.precision, self.saved = precision, None

    def __enter__(self):
        self.saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.precision)

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.saved)


# ---------------------------------------------------------------- the two sides


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """CCE's softcapping, cap * tanh(x / cap): it is torch.compiled, so 16-bit logits are computed in fp32 and
    rounded once (written so here)."""
    if cap is None:
        return logits
    return (torch.tanh(logits.float() / cap) * cap).to(logits.dtype)


def _torch_loss(case: dict, e, c, bias, targets, upcast: bool) -> torch.Tensor:
    """The peer's torch loss: rows of e @ c.T (+ bias), softcap, F.cross_entropy(logits.float(), reduction
    "none" for test_loss_forward, else the case's); "sum" divided by the valid count. `upcast`: e, c, bias in
    fp32 first (the ground truth)."""
    options = case["options"]
    hidden, target = _flat(e, targets, options["shift"])
    weight = c
    if upcast:
        hidden, weight, bias = hidden.float(), weight.float(), None if bias is None else bias.float()
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = _softcap(logits, options["softcap"])
    loss = F.cross_entropy(logits.float(), target, ignore_index=options["ignore_index"], reduction=options["reduction"])
    return _sum_per_valid(loss, target, options)


def _sum_per_valid(loss: torch.Tensor, target: torch.Tensor, options: dict) -> torch.Tensor:
    """ "sum" divided by the number of valid (non-ignored) rows of the shifted targets, as the peer's _grads."""
    if options["reduction"] == "sum":
        return loss / (target != options["ignore_index"]).count_nonzero()
    return loss


def _our_loss(case: dict, e, c, bias, targets) -> torch.Tensor:
    """fused_linear_cross_entropy_triton on the caller-shifted rows; "sum" divided as the peer's."""
    options = case["options"]
    hidden, target = _flat(e, targets, options["shift"])
    loss = fused_linear_cross_entropy_triton(
        hidden,
        c,
        target,
        bias=bias,
        ignore_index=options["ignore_index"],
        reduction=options["reduction"],
        softcap=options["softcap"],
    )
    return _sum_per_valid(loss, target, options)


def _leaf_grads(case: dict, inputs: dict, requires: tuple[str, ...], loss_fn) -> dict[str, torch.Tensor | None]:
    """loss_fn(...).mean().backward() on fresh leaves of e, c, bias (those in `requires` requiring grad); the
    .grad of every input (None where none arrived)."""
    leaves = {k: None if t is None else t.detach().clone().requires_grad_(k in requires) for k, t in inputs.items()}
    leaves["targets"] = inputs["targets"]
    loss_fn(case, leaves["e"], leaves["c"], leaves["bias"], leaves["targets"]).mean().backward()
    return {k: None if t is None else t.grad for k, t in leaves.items() if k != "targets"}


# ---------------------------------------------------------------- the peer's criterion


def _bound_report(case: dict, name: str, ours: torch.Tensor, gt: torch.Tensor, ref: torch.Tensor) -> str | None:
    """None when |gt - ours| <= |gt - ref| + error_tol everywhere (in float64), else the numbers: the largest
    excess over the bound, where, ours / gt / ref there, and how many elements exceed it."""
    assert ours.shape == gt.shape == ref.shape, f"{name}: shapes {ours.shape}, {gt.shape}, {ref.shape}"
    ours64, gt64, ref64 = (t.detach().double().flatten() for t in (ours, gt, ref))
    excess = (gt64 - ours64).abs() - ((gt64 - ref64).abs() + case["error_tol"])
    if bool((excess <= 0).all()):
        return None
    at = int(excess.argmax())
    return (
        f"{name}: {int((excess > 0).sum())}/{excess.numel()} elements over the bound, max excess "
        f"{excess[at].item():.3g} at flat index {at} (ours {ours64[at].item():.6g}, gt {gt64[at].item():.6g}, "
        f"torch {ref64[at].item():.6g}; error_tol {case['error_tol']:g})"
    )


def _check(case: dict, triples: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Raises PeerBoundExceeded listing every check of the case whose (ours, gt, ref) misses the bound."""
    reports = [_bound_report(case, name, *triples[name]) for name in triples]
    failed = [r for r in reports if r]
    if failed:
        raise PeerBoundExceeded(f"{case['id']}:\n  " + "\n  ".join(failed))


# ---------------------------------------------------------------- the three peer tests


def _run_forward(case: dict) -> None:
    """test_loss_forward: per-row losses (reduction none) against the fp32 ground truth."""
    inputs = _inputs(case)
    args = (inputs["e"], inputs["c"], inputs["bias"], inputs["targets"])
    precision = case["matmul_precision"]
    with torch.no_grad():
        with _MatmulPrecision(precision["ground_truth"]):
            gt = _torch_loss(case, *args, upcast=True)
        with _MatmulPrecision(precision["reference_and_ours"]):
            ref = _torch_loss(case, *args, upcast=False)
            ours = _our_loss(case, *args)
    _check(case, {"loss": (ours, gt, ref)})


def _run_backward(case: dict, requires: tuple[str, ...] = ("e", "c")) -> None:
    """test_loss_backward: the gradients of loss.mean() with respect to `requires` against the fp32 ground
    truth (its gradients land in the inputs' dtype, as the peer's)."""
    inputs = _inputs(case)
    precision = case["matmul_precision"]
    with _MatmulPrecision(precision["ground_truth"]):
        gt = _leaf_grads(case, inputs, requires, lambda *a: _torch_loss(*a, upcast=True))
    with _MatmulPrecision(precision["reference_and_ours"]):
        ref = _leaf_grads(case, inputs, requires, lambda *a: _torch_loss(*a, upcast=False))
        ours = _leaf_grads(case, inputs, requires, _our_loss)
    present = sorted(k for k, g in ours.items() if g is not None)
    assert present == sorted(requires), f"{case['id']}: .grad on {present}, requiring grad {sorted(requires)}"
    _check(case, {f"grad_{k}": (ours[k], gt[k], ref[k]) for k in requires})


def _run_partials(case: dict) -> None:
    """test_loss_partials: only the listed tensors require grad; exactly those get a .grad (the peer's assert),
    and (ours) those gradients meet the backward criterion."""
    _run_backward(case, tuple(case["options"]["requires_grad"]))


RUNNERS = {"cce_forward": _run_forward, "cce_backward": _run_backward, "cce_partials": _run_partials}


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in ALL_CASES])
def test_cce_case(case):
    """One ported CCE case on our fused linear cross-entropy, judged by CCE's criterion."""
    test = case["source"]["test"]
    if case["unsupported"]:
        RESULTS[(test, "unsupported")] += 1
        pytest.skip(f"unsupported: {case['unsupported']}")
    try:
        RUNNERS[case["reference"]](case)
    except PeerBoundExceeded:
        RESULTS[(test, "failed")] += 1
        raise
    except BaseException:
        RESULTS[(test, "error")] += 1
        raise
    RESULTS[(test, "passed")] += 1


# ---------------------------------------------------------------- counts


def data_counts() -> dict[str, dict[str, int]]:
    """Per peer test: `case_counts` of its cases."""
    return {test: case_counts([c for c in ALL_CASES if c["source"]["test"] == test]) for test in TESTS}


def readme_counts() -> dict[str, dict[str, int]]:
    """The CCE rows of tests/cases/peers/README.md's counts table: `| cce: test_x | n | n | n | n | n |`."""
    return _readme_counts(r"cce: (test_\w+)")


def test_summary(capsys):
    """The data's counts match the README's CCE table; prints them with this session's outcomes (the cases run
    before this test: cases, unsupported, run, passed, failed)."""
    counts = data_counts()
    with capsys.disabled():
        print(f"\nCCE peer cases (data counts; this session's outcomes on {DEVICE.type}):")
        for test, row in counts.items():
            outcomes = {k: RESULTS[(test, k)] for k in ("unsupported", "passed", "failed", "error")}
            outcomes["run"] = outcomes["passed"] + outcomes["failed"] + outcomes["error"]
            print(f"  {test}: {row}; {outcomes}")
    assert counts == readme_counts()
    ids = [c["id"] for c in ALL_CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for case in ALL_CASES:
        assert case["source"]["repo"] == "apple/ml-cross-entropy" and case["source"]["licence"] == "Apple-Sample-Code"
        assert case["unsupported"] is None or case["unsupported"], case["id"]
        assert case["reference"] in RUNNERS, case["id"]
