"""mathforge.bench.kernel_resources: the occupancy arithmetic and ptxas-log parsing on known numbers, one real compile
for sm_90 on this CPU machine (Triton's bundled ptxas), that the launch code passes what the sweep compiles, and that
the kernels' own launch choices at issue 11's shapes have no spills in the committed bench/results/sm90 JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mathforge.bench import kernel_resources as kr

RESULTS = sorted((kr.RESULTS_DIR / "sm90").glob(f"{kr.RESULT_NAME}_triton*.json"))

PTXAS_LOG = """ptxas-blackwell info    : 11 bytes gmem
ptxas-blackwell info    : Compiling entry function '_ce_kernel' for 'sm_90a'
ptxas-blackwell info    : Function properties for _ce_kernel
    392 bytes stack frame, 912 bytes spill stores, 752 bytes spill loads
ptxas-blackwell info    : Used 64 registers, used 1 barriers, 392 bytes cumulative stack size
"""


@pytest.mark.parametrize(
    ("registers", "shared", "warps", "programs", "limited_by"),
    [
        (64, 128, 32, 1, "registers"),  # 2048 regs/warp: 8 warps per sub-partition, 32 per SM = one 32-warp program
        (41, 0, 32, 1, "registers"),  # rounded to 48: 1536/warp, 10 per sub-partition = 40 warps: one program
        (40, 0, 2, 24, "registers"),  # 1280/warp: 12 per sub-partition = 48 warps (not 65536 / 1280 = 51)
        (30, 0, 4, 16, "threads"),  # 32 regs: 64 warps by registers = 16 programs; 2048 threads / 128 = 16 too
        (32, 100 * 1024, 4, 2, "shared"),  # 228 KB / (100 KB + 1 KB reserved)
        (16, 0, 1, 32, "programs"),  # at most 32 programs per SM
    ],
)
def test_occupancy_on_known_numbers(registers, shared, warps, programs, limited_by):
    occ = kr.occupancy(registers, shared, warps)
    assert occ["programs_per_sm"] == programs
    assert occ["warps_per_sm"] == programs * warps
    if limited_by != "threads":  # 30 registers at 4 warps ties registers and threads
        assert occ["limited_by"] == limited_by


def test_occupancy_rejects_bad_input():
    with pytest.raises(ValueError, match="registers > 0"):
        kr.occupancy(0, 0, 4)


def test_parse_ptxas_log():
    assert kr.parse_ptxas(PTXAS_LOG) == {"registers": 64, "stack_frame": 392, "spill_stores": 912, "spill_loads": 752}
    with pytest.raises(kr.ToolchainError, match="spill_stores"):
        kr.parse_ptxas("ptxas info    : Used 40 registers\n")


def test_rank_prefers_no_spills_then_l2_then_bytes_in_flight():
    base = dict(spill_stores=0, spill_loads=0, bytes_in_flight_per_sm=32768, programs_per_sm=1, registers=64)
    l2 = dict(reread_bytes_per_program=0)
    spilling = {**base, **l2, "spill_stores": 4, "bytes_in_flight_per_sm": 65536, "programs_per_sm": 4}
    overflowing = {**base, "reread_bytes_per_program": 300_000, "programs_per_sm": 4}  # 4 × 132 × 300 KB > 50 MB
    fitting = {**base, "reread_bytes_per_program": 300_000}  # 132 × 300 KB = 40 MB
    smaller = {**base, **l2, "bytes_in_flight_per_sm": 16384, "programs_per_sm": 8}
    assert min([spilling, overflowing, fitting, smaller], key=kr.rank) is fitting
    more_programs = {**base, **l2, "bytes_in_flight_per_sm": 1 << 20, "programs_per_sm": 2}
    assert min([more_programs, {**base, **l2}], key=kr.rank) is more_programs  # beyond 32 KB only programs count


def _toolchain_or_skip() -> str:
    try:
        return kr.check_toolchain(90)
    except kr.ToolchainError as exc:
        pytest.skip(f"the installed Triton cannot compile for sm_90 here: {exc}")


def test_compiles_one_kernel_for_sm90_without_a_gpu():
    """A real compile in a process without TRITON_INTERPRET (under it, Triton builds interpreted functions); its
    numbers are the committed JSON's for the same candidate."""
    _toolchain_or_skip()
    code = (
        "import json; from mathforge.bench.kernel_resources import measure; "
        "print(json.dumps(measure('swiglu_fwd', '[16384, 14336] bf16', 1024, 4)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["registers"] > 0 and record["spill_stores"] >= 0 and record["spill_loads"] >= 0
    assert record["programs_per_sm"] >= 1 and record["shared"] >= 0
    path = kr.RESULTS_DIR / "sm90" / f"{kr.result_name()}.json"
    if not path.exists():
        pytest.skip(f"no committed {path.name} for the installed Triton to compare with")
    committed = _records(path)[("swiglu_fwd", "[16384, 14336] bf16", 1024, 4)]
    assert {k: record[k] for k in ("registers", "spill_stores", "shared")} == {
        k: committed[k] for k in ("registers", "spill_stores", "shared")
    }


def test_compile_refuses_interpreted_kernels():
    if kr.swiglu._swiglu_fwd_kernel.__class__.__name__ == "JITFunction":
        pytest.skip("Triton was imported without TRITON_INTERPRET: kernels are JITFunctions here")
    launch = kr._swiglu_launch(kr.SWIGLU_SHAPE, 1024, 4, backward=False)
    with pytest.raises(kr.ToolchainError, match="TRITON_INTERPRET"):
        kr.compile_launch(launch)


def _records(path) -> dict[tuple, dict]:
    payload = json.loads(path.read_text())
    assert payload["what"] == "compiled for sm_90, not run"
    return {(r["variant"], r["shape"], r["block"], r["num_warps"]): r for r in payload["records"]}


def test_committed_results_cover_the_gpu_images_triton():
    """The GPU machine's image runs Triton 3.6; CI and this machine install the newest (3.9 now)."""
    assert {p.name for p in RESULTS} >= {"kernel_resources_triton3.6.json", "kernel_resources_triton3.9.json"}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_chosen_launch_parameters_have_no_spills_in_the_committed_json(path):
    """For every variant and shape: the kernel module's own choice is in the JSON of every Triton version, marked
    chosen, without spills."""
    records = _records(path)
    for name, fam in kr.FAMILIES.items():
        for label, shape in fam.shapes.items():
            block, warps = fam.chosen(shape)
            record = records.get((name, label, block, warps))
            assert record is not None, f"{name} {label}: chosen ({block}, {warps}) not in {path}"
            assert record["chosen"], f"{name} {label}: ({block}, {warps}) is the code's choice but not marked chosen"
            assert record["spill_stores"] == record["spill_loads"] == 0, f"{name} {label}: {record}"
            assert record["constexprs"] == {k: v for k, v in fam.build(shape, block, warps).constexprs.items()}, (
                f"{name} {label}: the JSON was compiled from other constexprs"
            )
    assert sum(r["chosen"] for r in records.values()) == sum(len(f.shapes) for f in kr.FAMILIES.values())


class _Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kwargs)` records the call."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("vocab", [32000, 151936])
def test_launch_ce_passes_what_the_sweep_compiles(monkeypatch, vocab, softcap):
    """`launch_ce` on meta tensors of the issue's shape, as on a GPU: the constexprs, num_warps and scalar arguments
    are those of the sweep's fused launch at the chosen parameters."""
    recorder = _Recorder()
    monkeypatch.setattr(kr.ce, "_ce_kernel", recorder)
    monkeypatch.setattr(kr.ce, "interpreting", lambda: False)
    n = kr.ROWS
    logits = torch.empty((n, vocab), dtype=torch.bfloat16, device="meta")
    rows = torch.empty(n, dtype=torch.float32, device="meta")
    kr.ce.launch_ce(
        logits,
        torch.empty(n, dtype=torch.int64, device="meta"),
        loss=rows,
        lse=torch.empty_like(rows),
        grad=torch.empty_like(logits),
        scale=torch.empty(1, dtype=torch.float32, device="meta"),
        ignore_index=-100,
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=softcap,
    )
    ((grid, args, kwargs),) = recorder.calls
    shape = kr.CEShape(vocab, softcap is not None)
    block, warps = kr.ce.ce_launch_params(vocab)
    launch = kr.FAMILIES["ce_fused"].build(shape, block, warps)
    assert grid == (n,) and kwargs.pop("num_warps") == launch.num_warps
    assert kwargs == launch.constexprs
    same = [
        (a.dtype, a.shape) == (b.dtype, b.shape) if isinstance(a, torch.Tensor) else a == b
        for a, b in zip(args, launch.args, strict=True)
    ]
    assert all(same), [i for i, ok in enumerate(same) if not ok]


def test_cli_says_clearly_when_triton_cannot_compile_for_cuda(monkeypatch, capsys, tmp_path):
    import triton.backends.nvidia.compiler as nvidia

    def missing(arch):
        raise RuntimeError("Cannot find ptxas-blackwell")

    monkeypatch.setattr(nvidia, "get_ptxas", missing)
    assert kr.main(["--only", "swiglu_fwd", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot compile for CUDA sm_90 here" in err and "Cannot find ptxas-blackwell" in err
    assert not list(tmp_path.iterdir()), "no results file on failure"


def test_bench_ce_launch_override_reaches_the_launch_and_is_undone(monkeypatch):
    """`mathforge.bench.kernels --ce-launch` times candidates of this sweep on a GPU: inside `ce_launch` the CE's
    launch takes the given (BLOCK, num_warps) (SINGLE_BLOCK when BLOCK ≥ V); after it, the kernel's own choice."""
    from mathforge.bench import kernels as bench

    recorder = _Recorder()
    monkeypatch.setattr(kr.ce, "_ce_kernel", recorder)
    monkeypatch.setattr(kr.ce, "interpreting", lambda: False)
    n, vocab = 4, 32000
    logits = torch.empty((n, vocab), dtype=torch.bfloat16, device="meta")
    rows = torch.empty(n, dtype=torch.float32, device="meta")
    args = dict(loss=rows, lse=torch.empty_like(rows), grad=None, scale=None, ignore_index=-100)
    args.update(label_smoothing=0.0, z_loss=0.0, softcap=None)
    target = torch.empty(n, dtype=torch.int64, device="meta")
    for block, warps in ((4096, 8), (32768, 32)):
        with bench.ce_launch(block, warps):
            kr.ce.launch_ce(logits, target, **args)
    kr.ce.launch_ce(logits, target, **args)
    seen = [(kw["BLOCK"], kw["num_warps"], kw["SINGLE_BLOCK"]) for _, _, kw in recorder.calls]
    assert seen == [(4096, 8, False), (32768, 32, True), (*kr.ce.ce_launch_params(vocab), False)]


def test_bench_ce_launch_option_parses_and_refuses_bad_launches():
    from mathforge.bench import kernels as bench

    parser = bench._parser()
    assert parser.parse_args(["--ce-launch", "16384x32,4096x8"]).ce_launch == ((16384, 32), (4096, 8))
    for bad in ("4096", "3000x8", "4096x3", "64x4", "4096xeight"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--ce-launch", bad])
