"""mathforge.evaluate: benchmarks (vendored GSM8K / MATH), generation, answer extraction, grading."""
