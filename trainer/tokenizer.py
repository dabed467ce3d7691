"""Train a small byte-level BPE tokenizer with `tokenizers` and save it as a Hugging Face tokenizer folder.

Used by the CPU demo and the tests (no tokenizer can be downloaded there). Digits are split one per
token, which makes arithmetic learnable for small models (as Llama and Qwen tokenizers do).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None):
    """A `PreTrainedTokenizerFast` (eos `<|endoftext|>`, pad `<|pad|>`) trained on `texts`; saved to `out_dir` if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
