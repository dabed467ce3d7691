"""mathforge.evaluate: benchmarks (vendored GSM8K / MATH), generation, answer extraction, grading.

from mathforge.evaluate import grade, extract_answer, run_eval
"""

from mathforge.evaluate.extract import extract_answer
from mathforge.evaluate.grade import grade

__all__ = ["extract_answer", "grade"]
