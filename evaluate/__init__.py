"""mathforge.evaluate: benchmarks (vendored GSM8K / MATH), generation, answer extraction, grading.

from mathforge.evaluate import grade, extract_answer, run_eval
"""

from mathforge.evaluate.extract import extract_answer
from mathforge.evaluate.grade import grade
from mathforge.evaluate.runner import run_eval

__all__ = ["extract_answer", "grade", "run_eval"]
