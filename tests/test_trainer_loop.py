"""The training loop end to end on CPU: loss falls, stages chain, FSDP2 over 2 gloo processes equals one
process on the same global batch, a SIGKILLed run resumes bit-identically, a NaN stops the run cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _trainer_utils import make_workspace, recipe
from safetensors.torch import load_file

from mathforge.trainer.config import load_config
from mathforge.trainer.train import LossModule, StagePlan, TrainingError, build_model, load_tokenizer, train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    return root, make_workspace(root)


def _weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _cli(*args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return [sys.executable, "-m", "mathforge.cli", *args], env


def test_loss_falls_and_stages_chain(workspace):
    root, ws = workspace
    stages = f"""
[[stages]]
name = "normal"
data = ["{ws["data"]}"]
epochs = 3
[[stages]]
name = "hard"
data = ["{ws["data"]}"]
steps = 4
lr = 1e-3
schedule = "constant"
"""
    summary = train(load_config(recipe(root, ws, out="chain", stages=stages)), progress=False)
    records = [json.loads(line) for line in (root / "chain" / "metrics.jsonl").read_text().splitlines()]
    normal = [r["loss"] for r in records if r["stage"] == "normal"]
    assert normal[-1] < 0.6 * normal[0]  # a 2-layer model learns the format and some sums
    assert [r["lr"] for r in records if r["stage"] == "hard"] == [1e-3] * 4
    assert [s["name"] for s in summary["stages"]] == ["normal", "hard"]
    assert summary["stages"][0]["packing_efficiency"] > 0.9
    assert records[-1]["global_step"] == summary["stages"][0]["steps"] + 4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = root / "chain" / "final"  # a Hugging Face folder: model and tokenizer load in transformers
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == len(AutoTokenizer.from_pretrained(final))
    config = load_config(recipe(root, ws, out="chain", stages=stages))
    assert json.loads((final / "mathforge.json").read_text()) == {"template": config.data.template}
    checkpoint = sorted((root / "chain" / "checkpoints").glob("step-*"))[-1] / "model"
    assert json.loads((checkpoint / "mathforge.json").read_text()) == {"template": config.data.template}


def test_two_processes_equal_one(workspace):
    root, ws = workspace
    # Adam's first steps are nearly sign descent: a gradient element that rounds to +1e-9 in one run and
    # -1e-9 in the other would move by 2·lr. A large eps makes the update linear in small gradients, so
    # the comparison checks the gradients' equality (the token-normalised loss across ranks), not rounding.
    overrides = ["optim.eps=1e-3"]
    single = recipe(root, ws, out="single")  # grad_accum = 2 in one process
    train(load_config(single, overrides), progress=False)
    command, env = _cli(
        "train",
        str(single),
        "--set",
        f'run.out_dir="{root / "fsdp"}"',
        "--set",
        "train.grad_accum=1",
        "--set",
        overrides[0],
        "--no-progress",
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        *command[1:],
    ]
    result = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _weights(root / "single"), _weights(root / "fsdp")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    losses = [
        [json.loads(line)["loss"] for line in (root / run / "metrics.jsonl").open()] for run in ("single", "fsdp")
    ]
    assert len(losses[0]) == len(losses[1]) > 20
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_sigkill_and_resume_is_bit_identical(workspace):
    root, ws = workspace
    extra = "checkpoint_every = 3\n"
    stages = f"""
[[stages]]
name = "normal"
data = ["{ws["data"]}"]
steps = 60
"""
    reference = recipe(root, ws, out="straight", stages=stages)
    reference.write_text(reference.read_text().replace("[run]\n", f"[run]\n{extra}"))
    train(load_config(reference), progress=False)

    killed = recipe(root, ws, out="killed", stages=stages)
    killed.write_text(killed.read_text().replace("[run]\n", f"[run]\n{extra}"))
    command, env = _cli("train", str(killed), "--no-progress")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = root / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        checkpoints.exists() and any(p.name >= "step-00000009" for p in checkpoints.glob("step-*"))
    ):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (root / "killed" / "final").exists()  # it really died mid-way

    command, env = _cli("train", str(killed), "--resume", "--no-progress")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # the straight run used this process's thread count; compare against a straight run in a subprocess too
    command, env = _cli("train", str(reference), "--set", f'run.out_dir="{root / "straight-sub"}"', "--no-progress")
    assert subprocess.run(command, env=env, capture_output=True, timeout=240).returncode == 0
    resumed, straight = _weights(root / "killed"), _weights(root / "straight-sub")
    assert all(torch.equal(resumed[name], straight[name]) for name in straight)


def test_nan_stops_with_last_good_checkpoint(workspace):
    root, ws = workspace
    config = load_config(
        recipe(root, ws, out="nan"), ["optim.lr=1e30", "optim.grad_clip=0.0", "optim.warmup_ratio=0.0"]
    )
    with pytest.raises(TrainingError, match="not finite; the last good step is saved in"):
        train(config, progress=False)
    saved = sorted((root / "nan" / "checkpoints").glob("step-*"))[-1]
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["global_step"] >= 1 and not state["finished"]


@pytest.mark.parametrize("log_every", [1, 4])
def test_injected_nan_stops_at_the_next_logging_step(workspace, monkeypatch, log_every):
    root, ws = workspace
    calls = []
    original = LossModule.forward

    def forward(self, *args):  # grad_accum = 2: the 11th micro-batch is the first of step 5 (0-based)
        calls.append(1)
        loss = original(self, *args)
        return loss * float("nan") if len(calls) == 11 else loss

    monkeypatch.setattr(LossModule, "forward", forward)
    out = f"nan-log{log_every}"
    overrides = [f"run.log_every={log_every}", "run.checkpoint_every=4", "stages.0.steps=12", "stages.0.epochs=0"]
    config = load_config(recipe(root, ws, out=out), overrides)
    checkpoints = root / out / "checkpoints"
    message = "stage normal, step 5: loss nan, grad norm nan — not finite; "
    if log_every == 1:  # checked before every update: step 5 is not applied, the state after step 4 is saved
        message += f"the last good step is saved in {checkpoints / 'step-00000005'}"
    else:  # checked on steps 3 and 7 (global 4 and 8): step 5's update already spoiled the weights
        message += f"found at step 7 .* the last good checkpoint is {checkpoints / 'step-00000004'}"
    with pytest.raises(TrainingError, match=message):
        train(config, progress=False)
    assert len(calls) == 2 * (6 if log_every == 1 else 8)  # it stopped at once / on the next logging step
    saved = sorted(p.name for p in checkpoints.glob("step-*"))
    assert saved == (["step-00000004", "step-00000005"] if log_every == 1 else ["step-00000004"])
    state = json.loads((checkpoints / saved[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == int(saved[-1][-8:]) and not state["finished"]
    logged = [json.loads(line)["global_step"] for line in (root / out / "metrics.jsonl").open()]
    assert logged == ([1, 2, 3, 4, 5] if log_every == 1 else [4])


def _reference_first_loss(config, *, label_smoothing: float = 0.0, z_loss: float = 0.0) -> float:
    """Step 0's loss per target token recomputed with torch's cross-entropy on the same model, data and batches."""
    from mathforge.trainer.data import build_micro_batch, tokenize

    tokenizer = load_tokenizer(config)
    model = build_model(config, tokenizer, None, torch.float32)
    data = tokenize(config.stages[0].data, tokenizer, template="plain", max_seq_len=64)
    plan = StagePlan(data, 256, 1, 2, config.stages[0].epochs, config.stages[0].steps, config.run.seed * 1000)
    total, targets = 0.0, 0
    with torch.no_grad():
        for b in plan.rank_bins(0, 0)[0]:
            batch = build_micro_batch(data, plan.bins[b])
            hidden = model(
                batch.input_ids,
                position_ids=batch.position_ids,
                cu_seqlens=batch.cu_seqlens,
                max_seqlen=batch.max_seqlen,
            )
            logits = hidden @ model.lm_head_weight.T
            keep = batch.labels != -100
            ce = torch.nn.functional.cross_entropy(
                logits[keep], batch.labels[keep], label_smoothing=label_smoothing, reduction="sum"
            )
            total += float(ce + z_loss * torch.logsumexp(logits[keep], -1).square().sum())
            targets += int(keep.sum())
    return total / targets


@pytest.mark.parametrize("loss", ["label_smoothing = 0.1", "z_loss = 1e-4"])
def test_loss_section_reaches_the_loss(workspace, loss):
    root, ws = workspace
    name, value = loss.split(" = ")
    path = recipe(root, ws, out=f"loss-{name}", extra=f"max_steps = 1\n[loss]\n{loss}\n")
    config = load_config(path)
    assert getattr(config.loss, name) == float(value)
    train(config, progress=False)
    first = json.loads((root / f"loss-{name}" / "metrics.jsonl").read_text().splitlines()[0])
    expected = _reference_first_loss(config, **{name: float(value)})
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    plain = _reference_first_loss(config)
    assert abs(expected - plain) > 1e-4  # ≫ the tolerance: the option changed the loss
    if name == "z_loss":  # logged apart: the cross-entropy part is the plain loss, the rest is the z-loss term
        assert first["ce_loss"] == pytest.approx(plain, rel=1e-5)
        assert first["z_loss"] == pytest.approx(expected - plain, rel=1e-3)
    else:
        assert "z_loss" not in first and "ce_loss" not in first


def test_bf16_weights_train_and_resume_exactly(workspace):
    root, ws = workspace
    stages = f"""
[[stages]]
name = "normal"
data = ["{ws["data"]}"]
steps = 16
"""
    straight = load_config(recipe(root, ws, out="bf16-straight", stages=stages), ["train.precision=bf16"])
    summary = train(straight, progress=False)
    records = [json.loads(line) for line in (root / "bf16-straight" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.8 * records[0]["loss"] and summary["precision"] == "bf16"
    weights = _weights(root / "bf16-straight")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    checkpoint = sorted((root / "bf16-straight" / "checkpoints").glob("step-*"))[-1]
    states = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]
    assert {s["exp_avg"].dtype for s in states.values()} == {torch.float32}

    stopped = load_config(
        recipe(root, ws, out="bf16-resumed", stages=stages), ["train.precision=bf16", "train.max_steps=7"]
    )
    assert train(stopped, progress=False)["stopped"] == "max_steps=7"
    resumed = load_config(recipe(root, ws, out="bf16-resumed", stages=stages), ["train.precision=bf16"])
    train(resumed, resume=True, progress=False)
    again = _weights(root / "bf16-resumed")
    assert all(torch.equal(again[name], weights[name]) for name in weights)  # incl. the stochastic rounding
