"""Helpers for the influence-selection tests: plausible non-math English text, and a tiny model folder."""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = [
    "The old lighthouse keeper",
    "My grandmother",
    "A young painter",
    "The village choir",
    "Our neighbour's dog",
    "The museum guide",
    "A tired traveller",
    "The river",
    "The new bakery on the corner",
    "Her brother",
    "The committee",
    "A quiet librarian",
    "The morning train",
    "The gardener",
    "Most visitors",
]
VERBS = [
    "walked slowly along",
    "wrote a long letter about",
    "remembered",
    "painted a picture of",
    "sang softly near",
    "complained about",
    "dreamed of",
    "carefully described",
    "laughed at",
    "waited patiently beside",
    "told stories about",
    "returned to",
    "admired",
    "cleaned",
    "photographed",
]
OBJECTS = [
    "the foggy harbour",
    "the autumn festival",
    "an abandoned castle",
    "the blue curtains",
    "the forest path",
    "a forgotten song",
    "the crowded market",
    "the ancient oak tree",
    "the summer holidays",
    "the rainy streets",
    "a small wooden boat",
    "the kitchen garden",
    "the evening news",
    "the mountain village",
    "a velvet armchair",
]
TAILS = [
    "before the sun went down.",
    "while the children played outside.",
    "and nobody seemed to notice.",
    "with a cup of tea in hand.",
    "as the bells rang in the distance.",
    "because it reminded her of home.",
    "during the long winter evenings.",
    "after the guests had left.",
    "without saying a single word.",
    "under a sky full of clouds.",
]


def english_text(rng: random.Random, sentences: int = 4) -> str:
    """A few random sentences of everyday English (no numbers, no mathematics)."""
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
        for _ in range(sentences)
    )


def tiny_model_folder(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """A random-init `tiny` model with a 400-token BPE tokenizer trained on `texts`, saved as a HF folder."""
    import torch

    from mathforge.model import from_config
    from mathforge.trainer.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)
    torch.manual_seed(seed)
    model = from_config("tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return folder


def train_briefly(folder: Path, texts: list[str], steps: int, *, lr: float = 2e-3, batch: int = 16) -> None:
    """`steps` AdamW steps (seeded) of plain language modelling on `texts` (all weights, 128 tokens each),
    saved back into the model folder."""
    import torch
    from transformers import AutoTokenizer

    from mathforge.model import from_pretrained
    from mathforge.synth.influence import Example, batch_loss, collate

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = from_pretrained(folder, dtype=torch.float32)
    examples = [Example(tokenizer(t, add_special_tokens=False)["input_ids"][:128], 0) for t in texts]
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(len(examples), (batch,), generator=generator).tolist()
        optim.zero_grad()
        (batch_loss(model, collate([examples[i] for i in pick])) / batch).backward()
        optim.step()
    model.save_pretrained(folder)
