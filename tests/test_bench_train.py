"""The training benchmark's baselines compute what they claim (CPU, tiny model): transformers' padding-free packed
forward keeps documents apart exactly as each document run alone, its labels carry the same targets as the
trainer's, and the quick run yields every row over the same tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mathforge.bench import train as bench
from mathforge.bench import train_hf, train_profile
from mathforge.errors import ConfigError
from mathforge.model import from_config
from mathforge.trainer.data import TokenizedData, build_micro_batch
from mathforge.trainer.train import LossModule

LENGTHS = [9, 14, 6, 11]
PROMPTS = [2, 3, 1, 4]


@pytest.fixture(scope="module")
def docs() -> TokenizedData:
    rng = np.random.default_rng(3)
    offsets = np.concatenate(([0], np.cumsum(LENGTHS)))
    tokens = rng.integers(0, 512, int(offsets[-1]), dtype=np.int32)  # the tiny preset's vocabulary
    return TokenizedData(tokens, offsets, np.array(PROMPTS, dtype=np.int64))


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return train_hf.build_hf("tiny", "fp32", "sdpa", torch.device("cpu")).eval()


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position that predicts a label (transformers' shift: logits[t] → labels[t+1])."""
    logits, targets = logits[:-1], labels[1:]
    keep = targets != -100
    return F.cross_entropy(logits[keep].double(), targets[keep], reduction="none")


def document_losses(model, docs: TokenizedData) -> torch.Tensor:
    """The reference: every document run alone, labels = its tokens after the prompt."""
    out = []
    for d in range(len(LENGTHS)):
        ids = torch.from_numpy(docs.tokens[docs.offsets[d] : docs.offsets[d + 1]].astype(np.int64))
        labels = ids.clone()
        labels[: PROMPTS[d]] = -100
        with torch.no_grad():
            logits = model(input_ids=ids[None], use_cache=False).logits[0]
        out.append(per_token_losses(logits, labels))
    return torch.cat(out)


def test_padding_free_packed_loss_equals_each_document_alone(docs, hf_model):
    batch = train_hf.padding_free_batch(build_micro_batch(docs, np.arange(len(LENGTHS))))
    reference = document_losses(hf_model, docs)
    assert len(reference) == sum(n - p for n, p in zip(LENGTHS, PROMPTS))
    with torch.no_grad():
        out = hf_model(**batch, use_cache=False)
    packed = per_token_losses(out.logits[0], batch["labels"][0])
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(reference.mean().item(), rel=1e-5)


@pytest.mark.parametrize("leak", ["one position run", "use_cache"])
def test_packed_losses_differ_when_documents_attend_to_each_other(docs, hf_model, leak):
    """The check above can fail: positions counting through the row, or a cache (transformers then does not look
    for packed documents), let documents see each other and change the losses."""
    batch = train_hf.padding_free_batch(build_micro_batch(docs, np.arange(len(LENGTHS))))
    if leak == "one position run":
        batch["position_ids"] = torch.arange(sum(LENGTHS))[None]
    with torch.no_grad():
        logits = hf_model(**batch, use_cache=leak == "use_cache").logits[0]
    packed = per_token_losses(logits, batch["labels"][0])
    assert (packed - document_losses(hf_model, docs)).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_vs_documents_is_rounding_small(docs, attn):
    torch.manual_seed(0)
    model = train_hf.build_hf("tiny", "fp32", attn, torch.device("cpu"))
    batch = train_hf.padding_free_batch(build_micro_batch(docs, np.arange(len(LENGTHS))))
    assert train_hf.packed_vs_documents(model, batch, "fp32") < 1e-5
    assert model.config._attn_implementation == attn  # the SDPA reference is switched back


def test_packed_vs_documents_sees_documents_attending_to_each_other(docs, hf_model, monkeypatch):
    """With transformers blind to the packing (its detection stubbed out), documents attend to the earlier ones
    in the row, and the check says so."""
    from transformers import masking_utils

    batch = train_hf.padding_free_batch(build_micro_batch(docs, np.arange(len(LENGTHS))))
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    assert train_hf.packed_vs_documents(hf_model, batch, "fp32") > 1e-3


def test_our_loss_equals_transformers_padding_free_loss_on_the_same_weights(docs, tmp_path):
    """Same weights, same micro-batch: the trainer's loss per target equals transformers' padding-free loss, so
    both rows train on the same targets."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    ours = from_config("tiny")
    ours.save_pretrained(tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa", dtype=torch.float32)
    micro = build_micro_batch(docs, np.arange(len(LENGTHS)))
    with torch.no_grad():
        mine = LossModule(ours)(micro.input_ids, micro.position_ids, micro.cu_seqlens, micro.max_seqlen, micro.labels)
        hf = theirs(**train_hf.padding_free_batch(micro), use_cache=False).loss
    assert micro.num_targets == sum(n - p for n, p in zip(LENGTHS, PROMPTS))
    assert (mine / micro.num_targets).item() == pytest.approx(hf.item(), rel=1e-5)


def test_padded_batch_holds_the_same_tokens_and_targets(docs):
    micro = build_micro_batch(docs, np.arange(len(LENGTHS)))
    padded = train_hf.padded_batch(docs, np.arange(len(LENGTHS)))
    assert padded["input_ids"].shape == (len(LENGTHS), max(LENGTHS))
    assert bench.real_tokens(padded) == sum(LENGTHS)
    assert int((padded["labels"][:, 1:] != -100).sum()) == micro.num_targets
    assert padded["input_ids"][padded["attention_mask"].bool()].tolist() == micro.input_ids.tolist()


def test_quick_run_has_every_row_over_the_same_tokens(capsys):
    result = bench.main(["--quick"])
    rows = {row["family"]: row for row in result["rows"]}
    assert set(rows) == {"mathforge", "liger-padding-free", "padded"}
    for row in rows.values():
        assert "error" not in row, row
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
        assert row["precision"] == "fp32"
    assert rows["liger-padding-free"]["name"] == "transformers (no liger: CPU), padding-free (sdpa)"
    assert rows["liger-padding-free"]["packed_vs_documents_max_rel_diff"] < 1e-5
    tokens = {tuple(row["tokens_per_step"]) for row in rows.values()}
    targets = {tuple(row["targets_per_step"]) for row in rows.values()}
    assert len(tokens) == 1 and len(targets) == 1, (tokens, targets)
    assert "speedup_vs_liger_padding_free" in rows["mathforge"] and "speedup_vs_padded" in rows["mathforge"]
    speedup = rows["mathforge"]["tokens_per_s"] / rows["liger-padding-free"]["tokens_per_s"]
    assert rows["mathforge"]["speedup_vs_liger_padding_free"] == pytest.approx(speedup)
    assert rows["mathforge"]["targets_met"] == {
        "mfu": None,  # no GPU peak on CPU
        "speedup_vs_liger_padding_free": speedup >= 1.3,
        "memory_vs_liger_padding_free": None,  # no CUDA peak memory on CPU
    }
    assert "transformers padded" in capsys.readouterr().out


def test_liger_registry_rejects_an_unknown_model_type():
    with pytest.raises(ConfigError, match=r"'gpt2'.*known: qwen2, llama, mistral"):
        train_hf.liger_patch("gpt2")


def test_liger_applied_refuses_an_unknown_model_type_even_on_cpu(hf_model):
    hf_model.config.model_type = "gpt2"
    try:
        with pytest.raises(ConfigError, match="gpt2"), train_hf.liger_applied(hf_model, torch.device("cpu")):
            pass
    finally:
        hf_model.config.model_type = "llama"


def test_liger_is_not_applied_on_cpu(hf_model):
    with train_hf.liger_applied(hf_model, torch.device("cpu")) as why_not:
        assert why_not == "CPU"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
        ("_ce_kernel", "cross-entropy"),
        ("_rms_bwd_kernel", "norm/activation"),
        ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>", "optimizer/grad-clip"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
        ("Memcpy DtoD (Device -> Device)", "memcpy/other"),
    ],
)
def test_profile_categories(name, expected):
    assert train_profile.category(name) == expected


def test_liger_patch_is_undone_after_its_row(monkeypatch):
    """Where Liger runs it swaps transformers' module-level rope function and norm/MLP classes; they are put back
    after the row, so later rows (the padded baseline) run plain transformers. Checked on CPU by letting the patch
    be applied (its kernels are not run)."""
    pytest.importorskip("liger_kernel.transformers")
    from transformers.models.llama import modeling_llama

    before = {k: getattr(modeling_llama, k) for k in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")}
    model = train_hf.build_hf("tiny", "fp32", "sdpa", torch.device("cpu"))
    monkeypatch.setattr(train_hf, "liger_unavailable", lambda device: None)
    with train_hf.liger_applied(model, torch.device("cpu")) as why_not:
        assert why_not is None
        assert modeling_llama.apply_rotary_pos_emb is not before["apply_rotary_pos_emb"]
        assert modeling_llama.LlamaRMSNorm is not before["LlamaRMSNorm"]
        assert "lce_forward" in model.forward.__func__.__qualname__
    assert {k: getattr(modeling_llama, k) for k in before} == before


def test_work_past_the_time_budget_is_recorded_as_skipped():
    opts = bench.Options(
        preset="tiny", tokens=512, accum=1, steps=2, warmup=1, precisions=("fp32",), hf_attn=("sdpa",), profile=True
    )
    result = bench.run(bench.dataclasses.replace(opts, time_budget_s=1e-9), torch.device("cpu"))
    assert [(r["family"], r["error"]) for r in result["rows"]] == [
        (family, "skipped: --time-budget-s 1e-09 spent") for family in ("mathforge", "liger-padding-free", "padded")
    ]
    assert result["profile"] == {"skipped": "skipped: --time-budget-s 1e-09 spent"}


def test_largest_model_bisects_the_layers_of_the_first_preset_that_does_not_fit(monkeypatch):
    """The search logic, with a stand-in step that 'fits' below 5e9 parameters (no GPU here)."""

    def fake_step(model, opts, device):
        params = from_config(model, device="meta").num_parameters()
        row = {"model": model, "parameters": params}
        return row if params < 5e9 else row | {"error": "out of memory"}

    monkeypatch.setattr(bench, "one_step", fake_step)
    found = bench.largest_model(bench.Options(), torch.device("cpu"), bench.Budget(0))
    tried = [row["model"] for row in found["tried"]]
    assert tried[:4] == ["qwen2.5-0.5b", "llama3.2-1b", "qwen2.5-1.5b", "mistral-7b"]
    layers = found["largest"]["num_hidden_layers"]
    assert found["largest"]["preset"] == "mistral-7b"
    below = from_config({"preset": "mistral-7b", "num_hidden_layers": layers}, device="meta").num_parameters()
    above = from_config({"preset": "mistral-7b", "num_hidden_layers": layers + 1}, device="meta").num_parameters()
    assert below < 5e9 <= above
