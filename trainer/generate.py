"""Moved to `mathforge.model.generate`; these names stay importable from here."""

from mathforge.model.generate import generate, generate_tokens, sample_next

__all__ = ["generate", "generate_tokens", "sample_next"]
