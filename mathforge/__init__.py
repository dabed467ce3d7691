"""mathforge: synthesize math problems, fine-tune LLMs on them in stages, evaluate on GSM8K and MATH.

Subpackages: `mathforge.kernels` (Triton ops), `mathforge.trainer` (model, packing, training loop),
`mathforge.synth` (data synthesis), `mathforge.evaluate` (benchmarks and grading),
`mathforge.bench` (benchmarks). `mathforge._native` is the compiled C++ extension.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mathforge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
