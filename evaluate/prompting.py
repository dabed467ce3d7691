"""Moved: prompts are a core module, `mathforge.prompts`, shared by training and evaluation.

This name stays so `from mathforge.evaluate.prompting import load_prompt` keeps working.
"""

from mathforge.prompts import PROMPT_DIR, PROMPTS, Prompt, Shot, available, default_prompt, load_prompt

__all__ = ["PROMPTS", "PROMPT_DIR", "Prompt", "Shot", "available", "default_prompt", "load_prompt"]
