"""mathforge.model against transformers (same weights, fp32), packing, losses, checkpoints, configs."""

import json

import pytest
import torch

from mathforge.errors import ConfigError, DataError
from mathforge.model import (
    ModelConfig,
    config_from_hf,
    from_config,
    from_pretrained,
    rope_inv_freq,
    shift_labels,
)

transformers = pytest.importorskip("transformers")

VOCAB = 128
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def hf_config(kind: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    if kind == "llama-bias":  # attention_bias: transformers puts biases on q, k, v AND o_proj
        return transformers.LlamaConfig(**common, num_key_value_heads=2, attention_bias=True, rms_norm_eps=1e-5)
    if kind == "llama":  # GQA 4:2, Llama-3 rope scaling that bites at these lengths
        return transformers.LlamaConfig(
            **common,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_theta=500000.0,
            rope_scaling=dict(LLAMA3_ROPE),
            rms_norm_eps=1e-5,
        )
    if kind == "qwen2":  # q/k/v biases, tied embeddings
        return transformers.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)
    return transformers.MistralConfig(**common, num_key_value_heads=1, head_dim=32, sliding_window=None)  # MQA


def random_hf_model(kind: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(kind), dtype=torch.float32).eval()
    with torch.no_grad():  # non-trivial norms and biases, not HF's ones and zeros
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kind", ["llama", "llama-bias", "qwen2", "mistral"])
def test_logits_match_transformers_both_directions(kind, tmp_path):
    hf = random_hf_model(kind)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    assert ours.config.model_type == kind.removesuffix("-bias")
    assert (ours.lm_head is None) == (kind == "qwen2")
    assert ours.config.attention_bias == (kind in ("qwen2", "llama-bias"))
    attn, hf_attn = ours.layers[1].self_attn, hf.model.layers[1].self_attn
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):  # the same biases as transformers builds, loaded
        ref_bias = getattr(hf_attn, proj).bias
        assert (getattr(attn, proj).bias is None) == (ref_bias is None), proj
        if ref_bias is not None:
            assert torch.equal(getattr(attn, proj).bias, ref_bias), proj
    assert (hf_attn.o_proj.bias is not None) == (kind == "llama-bias")  # Qwen2: q/k/v biases only
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.logits(ours(ids))
    assert rel_err(got, ref) <= 1e-5

    # ours → save_pretrained (sharded) → transformers
    ours.save_pretrained(tmp_path / "ours", max_shard_size=30_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert ("lm_head.weight" in index["weight_map"]) == (kind != "qwen2")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert (reloaded.model.layers[0].self_attn.o_proj.bias is not None) == (kind == "llama-bias")
    with torch.no_grad():
        assert rel_err(reloaded(ids).logits, ref) <= 1e-5
    # and back into ours from our own folder
    again = from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(again.logits(again(ids)), got)


def test_llama3_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = hf_config("llama")
    ref, scale = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = rope_inv_freq(config_from_hf(hf.to_dict()))
    assert scale == 1.0
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    plain = rope_inv_freq(ModelConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0))
    assert not torch.allclose(ours, plain)  # the scaling changes the low frequencies


def test_bf16_save_load_keeps_dtype_and_values(tmp_path):
    model = from_config("tiny", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "model.safetensors.index.json").exists()
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = from_pretrained(tmp_path)
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert from_pretrained(tmp_path, dtype=torch.float32).norm.weight.dtype == torch.float32


def test_missing_weight_is_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    from_config("tiny").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match="model.layers.1.mlp.up_proj.weight"):
        from_pretrained(tmp_path)


def packed_batch(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, 512, (n,), generator=gen) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return docs, torch.cat(docs), cu


def test_packed_forward_equals_per_document_and_padded():
    torch.manual_seed(0)
    model = from_config("tiny").eval()
    docs, ids, cu = packed_batch([5, 9, 1, 7])
    positions = torch.cat([torch.arange(len(d)) for d in docs])
    with torch.no_grad():
        packed = model(ids, position_ids=positions, cu_seqlens=cu, max_seqlen=9)
        derived = model(ids, cu_seqlens=cu)  # positions and max_seqlen derived from cu_seqlens
        alone = torch.cat([model(d) for d in docs])
        torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(derived, packed, rtol=0, atol=0)
        for side in ("right", "left"):
            ids2 = torch.zeros(len(docs), 9, dtype=torch.long)
            mask = torch.zeros(len(docs), 9, dtype=torch.long)
            for i, d in enumerate(docs):
                cols = slice(0, len(d)) if side == "right" else slice(9 - len(d), 9)
                ids2[i, cols], mask[i, cols] = d, 1
            padded = model(ids2, attention_mask=mask)
            assert padded.shape == (4, 9, 64)
            torch.testing.assert_close(padded[mask.bool()], alone, rtol=1e-5, atol=1e-5)
            assert torch.all(padded[~mask.bool()] == 0)


def test_shift_labels_masks_prompts_and_boundaries():
    ids = torch.tensor([10, 11, 12, 13, 20, 21, 22])
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    prompt = torch.tensor([1, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    assert shift_labels(ids, cu).tolist() == [11, 12, 13, -100, 21, 22, -100]
    assert shift_labels(ids, cu, prompt).tolist() == [-100, 12, 13, -100, 21, 22, -100]
    rows = torch.tensor([[1, 2, 3], [4, 5, 0]])
    pad = torch.tensor([[0, 0, 0], [0, 0, 1]], dtype=torch.bool)
    assert shift_labels(rows, prompt_mask=pad).tolist() == [[2, 3, -100], [5, -100, -100]]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_loss_and_grads_equal_separate_documents(checkpointing):
    torch.manual_seed(0)
    model = from_config("tiny")
    model.activation_checkpointing = checkpointing
    docs, ids, cu = packed_batch([6, 3, 8], seed=2)
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[[0, 1, 6, 7]] = True  # two-token prompts opening documents 0 (tokens 0-5) and 1 (tokens 6-8)
    labels = shift_labels(ids, cu, prompt)
    loss = model.loss(model(ids, cu_seqlens=cu, max_seqlen=8), labels)
    assert loss.dtype == torch.float32
    loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    model.activation_checkpointing = False
    total = torch.zeros(())
    bounds = cu.tolist()
    for d, (a, b) in zip(docs, zip(bounds[:-1], bounds[1:])):
        lab = shift_labels(d, torch.tensor([0, len(d)], dtype=torch.int32), prompt[a:b])
        total = total + model.loss(model(d), lab)
    total.backward()
    torch.testing.assert_close(loss, total, rtol=1e-5, atol=1e-6)
    n_predicted = int((labels != -100).sum())
    assert n_predicted == 17 - 5  # not predicted from t = 0, 6 (prompt targets) and 5, 8, 16 (document ends)
    mean = model.loss(model(ids, cu_seqlens=cu), labels, reduction="mean")
    torch.testing.assert_close(mean, loss / n_predicted, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def _torch_loss(logits, labels, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The training loss written with torch alone (summed over predicted tokens), to check `loss` against."""
    import torch.nn.functional as F

    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum", label_smoothing=label_smoothing)
    lse = torch.logsumexp(logits, dim=-1)[labels != ignore_index]
    return ce + z_loss * lse.square().sum()


@pytest.mark.parametrize(
    "options",
    [
        {"label_smoothing": 0.1},
        {"z_loss": 1e-2},
        {"softcap": 2.0},
        {"ignore_index": 7},
        {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 3.0},
    ],
)
def test_loss_options_reach_the_kernel(options):
    model = from_config("tiny")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # logits of a few units, so that softcap and z_loss bite
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=gen) * 0.3)
    hidden = torch.randn(2, 12, 64, generator=gen)
    labels = torch.randint(0, 512, (2, 12), generator=gen)
    labels[0, :3] = options.get("ignore_index", -100)  # not predicted
    labels[1, -1] = 7  # an ordinary target, unless ignore_index=7
    logits = (hidden @ model.lm_head.weight.T).reshape(-1, 512)
    with torch.no_grad():
        got = model.loss(hidden, labels, **options)
        plain = model.loss(hidden, labels)  # the defaults (with ignore_index=7: the 7s are predicted)
    want = _torch_loss(logits, labels.reshape(-1), **options)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert abs(float(got - plain)) > 1e-3 * abs(float(plain))  # the option changed the loss
    if "ignore_index" not in options:
        mean = model.loss(hidden, labels, reduction="mean", **options)
        torch.testing.assert_close(mean, want / int((labels != -100).sum()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "params"),
    [
        ("qwen2.5-0.5b", 494_032_768),
        ("qwen2.5-1.5b", 1_543_714_304),
        ("qwen2.5-7b", 7_615_616_512),
        ("llama3.2-1b", 1_235_814_400),
        ("llama3-8b", 8_030_261_248),
        ("mistral-7b", 7_241_732_096),
    ],
)
def test_presets_have_the_real_parameter_counts(preset, params):
    model = from_config(preset, device="meta")
    assert model.num_parameters() == params
    if params > 2e9:  # big models default to the meta device
        assert from_config(preset).embed_tokens.weight.is_meta


def test_flops_per_token_hand_computed():
    model = from_config("tiny", device="meta")
    cfg = model.config  # 2 layers, hidden 64, 4 heads × 16, 2 kv heads, intermediate 160, vocab 512
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160 + 2 * 64  # q, k, v, o, MLP, two norms
    n_matmul = 2 * per_layer + 512 * 64
    attn = 2 * 2 * 4 * 16 * (100**2 + 50**2) / 150
    assert model.flops_per_token([100, 50]) == pytest.approx(3 * (2 * n_matmul + attn))
    assert cfg.head_dim == 16


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"quantization_config": {"bits": 4}}, "quantization_config"),
        ({"architectures": ["GPT2LMHeadModel"]}, "GPT2"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "attention_bias": True}, "attention_bias"),
    ],
)
def test_bad_configs_name_the_field(change, field, tmp_path):
    raw = {**from_config("tiny", device="meta").config.to_hf_dict(), **change}
    raw.pop("rope_parameters") if "rope_scaling" in change else None
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=field) as info:
        from_pretrained(tmp_path)
    assert "config.json" in str(info.value)


def test_from_config_overrides_and_errors():
    model = from_config(
        {
            "preset": "qwen2.5-0.5b",
            "num_hidden_layers": 2,
            "hidden_size": 128,
            "vocab_size": 256,
            "num_attention_heads": 4,
            "intermediate_size": 64,
        }
    )
    assert (model.config.head_dim, model.config.num_key_value_heads, model.lm_head) == (32, 2, None)
    assert model.layers[0].self_attn.q_proj.bias is not None
    with pytest.raises(ConfigError, match="presets: tiny"):
        from_config("qwen9")
    with pytest.raises(ConfigError, match="max_shard_size"):
        from_config("tiny").save_pretrained("/tmp/never", max_shard_size="lots")
    model.attention_backend = "flash-atn"
    with pytest.raises(ConfigError, match="allowed: auto, flash-attn-3"):
        model(torch.tensor([1, 2, 3]))


def test_sliding_window_longer_documents_are_refused():
    model = from_config(
        {
            "model_type": "mistral",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "sliding_window": 4,
        }
    )
    model(torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ConfigError, match="sliding_window=4"):
        model(torch.tensor([1, 2, 3, 4, 5]))


def test_model_package_stands_below_trainer_and_keeps_the_old_import_paths():
    import subprocess
    import sys

    import mathforge.model
    import mathforge.trainer.generate
    import mathforge.trainer.model

    code = "import sys, mathforge.model; print(sorted(m for m in sys.modules if m.startswith('mathforge.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for upper in ("trainer", "evaluate", "synth", "bench"):
        assert f"'mathforge.{upper}" not in loaded, loaded
    for name in ("from_config", "from_pretrained", "shift_labels", "ModelConfig", "Transformer", "KVCache"):
        assert getattr(mathforge.trainer.model, name) is getattr(mathforge.model, name), name
    for name in ("generate", "generate_tokens", "sample_next"):
        assert getattr(mathforge.trainer.generate, name) is getattr(mathforge.model, name), name


# ----------------------------------------------------------------- CPU threads for model runs (mathforge.hardware)


def test_thread_rule_leaves_busy_cores_out():
    from mathforge.hardware import choose_threads

    assert [choose_threads(2, busy) for busy in (0.0, 0.4, 0.6, 1.0, 2.0, 7.5)] == [2, 2, 1, 1, 1, 1]
    assert choose_threads(8, 3.2) == 5 and choose_threads(8, 0.0) == 8 and choose_threads(1, 0.0) == 1


def test_configure_threads_respects_the_users_choice(monkeypatch):
    from mathforge import hardware

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert hardware.configure_threads() is None and torch.get_num_threads() == before
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        torch.set_num_threads(2)  # torch's default on a machine of 2 physical cores, one of them busy
        monkeypatch.setattr(hardware, "physical_cores", lambda: 2)
        monkeypatch.setattr(hardware, "busy_cpus", lambda interval=0.1: 1.0)
        assert hardware.configure_threads() == 1 and torch.get_num_threads() == 1
        assert hardware.configure_threads() is None  # now torch's count is not its default: a choice, kept
    finally:
        torch.set_num_threads(before)
