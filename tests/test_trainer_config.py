"""Recipes: TOML → Config, overrides, and errors that name the key and the allowed values."""

import pytest

from mathforge.errors import ConfigError
from mathforge.trainer.config import apply_overrides, config_from_dict, load_config
from mathforge.trainer.optim import lr_at

BASE = {"stages": [{"name": "a", "data": ["x.jsonl"], "epochs": 1}]}


def test_defaults_and_stage_overrides():
    config = config_from_dict(
        {
            **BASE,
            "optim": {"lr": 1e-4},
            "stages": [{"name": "a", "data": ["x.jsonl"], "lr": 5e-5, "schedule": "wsd", "template": "jiuzhang"}],
        }
    )
    stage = config.stages[0]
    assert config.stage_optim(stage).lr == 5e-5 and config.stage_optim(stage).schedule == "wsd"
    assert config.stage_data(stage).template == "jiuzhang"
    assert config.optim.lr == 1e-4  # the base is untouched


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**BASE, "optim": {"learning_rate": 1}}, "unknown key 'learning_rate'; allowed: lr, min_lr_ratio"),
        (
            {**BASE, "optim": {"schedule": "linear"}},
            r"\[optim\].schedule: unknown learning-rate schedule 'linear'; known: cosine, wsd, constant",
        ),
        (
            {"stages": [{"name": "a", "data": ["x.jsonl"], "schedule": "cosin"}]},
            r"stages\[0\].schedule: unknown learning-rate schedule 'cosin'; known: cosine, wsd, constant",
        ),
        ({**BASE, "train": {"z_loss": 1e-4}}, r"\[train\]: unknown key 'z_loss'"),
        ({**BASE, "loss": {"z_loss": -1.0}}, r"\[loss\] z_loss must be >= 0"),
        ({**BASE, "loss": {"label_smoothing": 1.0}}, r"\[loss\] label_smoothing must be in \[0, 1\)"),
        ({**BASE, "loss": {"softcap": 0}}, r"\[loss\] softcap must be > 0"),
        ({**BASE, "loss": {"ignore_index": 5}}, r"\[loss\] ignore_index must be < 0"),
        ({**BASE, "loss": {"smoothing": 0.1}}, r"\[loss\]: unknown key 'smoothing'; allowed: z_loss, label_smoothing"),
        ({**BASE, "train": {"grad_accum": "2"}}, r"\[train\].grad_accum: expected an integer"),
        ({**BASE, "trian": {}}, "unknown section 'trian'"),
        ({"stages": []}, "at least one stage"),
        ({"stages": [{"name": "a", "data": []}]}, r"stages\[0\] \(a\) has no data"),
        ({**BASE, "data": {"max_seq_len": 8192}}, "exceeds \\[train\\] micro_batch_tokens=4096"),
    ],
)
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, source="recipe.toml")


def test_overrides_and_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[optim]\nlr = 1e-3\n[[stages]]\nname = "a"\ndata = "x.jsonl"\n')
    config = load_config(path, ["optim.lr=2e-5", "stages.0.epochs=3", "data.template=jiuzhang", "run.seed=7"])
    assert (config.optim.lr, config.stages[0].epochs, config.data.template, config.run.seed) == (
        2e-5,
        3.0,
        "jiuzhang",
        7,
    )
    assert config.stages[0].data == ["x.jsonl"]
    with pytest.raises(ConfigError, match="stages.4 is not an index of a list of 1"):
        apply_overrides({"stages": [{}]}, ["stages.4.epochs=1"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_schedules():
    config = config_from_dict({**BASE, "optim": {"lr": 1.0, "warmup_ratio": 0.1, "min_lr_ratio": 0.1}}).optim
    assert [round(lr_at(s, 100, config), 6) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # 10 warm-up steps
    assert lr_at(10, 100, config) == pytest.approx(1.0)
    assert lr_at(55, 100, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    wsd = config_from_dict(
        {**BASE, "optim": {"lr": 1.0, "warmup_ratio": 0.1, "schedule": "wsd", "decay_ratio": 0.2}}
    ).optim
    assert lr_at(50, 100, wsd) == 1.0 and lr_at(79, 100, wsd) == 1.0
    assert lr_at(89, 100, wsd) == pytest.approx(0.5) and lr_at(99, 100, wsd) == pytest.approx(0.0)
    const = config_from_dict({**BASE, "optim": {"lr": 2.0, "warmup_ratio": 0.0, "schedule": "constant"}}).optim
    assert lr_at(0, 10, const) == lr_at(9, 10, const) == 2.0


def test_unknown_schedule_is_refused_not_run_as_wsd():
    import dataclasses

    from mathforge.trainer.optim import SCHEDULES

    assert SCHEDULES.names() == ["cosine", "wsd", "constant"]
    config = config_from_dict(BASE).optim
    for name in ("linear", "WSD"):  # used to train with WSD silently
        with pytest.raises(ConfigError, match=f"unknown learning-rate schedule '{name}'; known: cosine, wsd, constant"):
            lr_at(50, 100, dataclasses.replace(config, schedule=name))


def test_loss_section():
    config = config_from_dict({**BASE, "loss": {"z_loss": 1e-4, "label_smoothing": 0.1, "softcap": 30}})
    assert (config.loss.z_loss, config.loss.label_smoothing, config.loss.softcap) == (1e-4, 0.1, 30.0)
    assert config.loss.ignore_index == -100 and config_from_dict(BASE).loss.softcap is None
    assert config.to_dict()["loss"] == {"z_loss": 1e-4, "label_smoothing": 0.1, "softcap": 30.0, "ignore_index": -100}


def test_shipped_recipes_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs"
    recipes = {p.name: load_config(p) for p in sorted(folder.glob("*.toml"))}
    assert list(recipes) == ["jiuzhang-synthesizer.toml", "jiuzhang.toml", "skywork-stage1.toml", "skywork-stage2.toml"]
    stage1 = recipes["skywork-stage1.toml"]
    assert (stage1.optim.weight_decay, stage1.optim.warmup_ratio, stage1.data.max_seq_len) == (0.0, 0.03, 2048)
    assert stage1.stages[0].epochs == 3 and recipes["jiuzhang.toml"].optim.schedule == "wsd"
    # JiuZhang: pre-training on synthetic data puts the loss on every token, SFT and the synthesizer on the response
    assert [s.loss_on for s in recipes["jiuzhang.toml"].stages] == ["all", "response"]
    assert [s.loss_on for s in recipes["jiuzhang-synthesizer.toml"].stages] == ["response"]
    assert recipes["jiuzhang-synthesizer.toml"].data.template == "jiuzhang"


def test_loss_on_is_checked_per_stage():
    config = config_from_dict({**BASE, "stages": [{**BASE["stages"][0], "loss_on": "all"}]})
    assert config.stages[0].loss_on == "all" and config_from_dict(BASE).stages[0].loss_on == "response"
    with pytest.raises(ConfigError, match="loss_on"):
        config_from_dict({**BASE, "stages": [{**BASE["stages"][0], "loss_on": "prompt"}]})


def test_adamw_bf16_matches_torch_adamw_on_fp32_weights():
    import torch

    from mathforge.trainer.optim import AdamWBf16

    torch.manual_seed(0)
    ours = torch.randn(6, 5, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    opt_ours = AdamWBf16([ours], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(6):
        grad = torch.randn(6, 5)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_bf16_weights_keep_fp32_states_and_small_updates_survive():
    import torch

    from mathforge.trainer.optim import AdamWBf16, round_to_bf16_stochastically

    torch.manual_seed(0)
    values = torch.full((200_000,), 1.0 + 2**-10)  # a quarter of bf16's step (2^-7) above 1.0
    rounded = round_to_bf16_stochastically(values).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}  # only the two neighbours
    assert abs(rounded.mean().item() - (1.0 + 2**-10)) < 2e-5  # unbiased: ~25% round up
    weight = torch.ones(10_000, dtype=torch.bfloat16, requires_grad=True)
    optimizer = AdamWBf16([weight], lr=1e-4)  # each Adam step moves ~1e-4, far below bf16's 2^-8 below 1.0
    for _ in range(50):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    assert optimizer.state[weight]["exp_avg"].dtype == torch.float32 and weight.dtype == torch.bfloat16
    assert abs(weight.float().mean().item() - (1.0 - 50 * 1e-4)) < 5e-4  # round-to-nearest would stay at 1.0
    assert weight.to(torch.float32).mean().item() < 1.0
