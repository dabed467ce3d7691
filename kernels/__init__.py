"""mathforge.kernels: Triton ops with torch references, autograd and attention dispatch.

Public API (stable names): `cross_entropy`, `fused_linear_cross_entropy`, `rms_norm`, `swiglu`,
`apply_rope`, `varlen_attention`. Each first runs its check in `mathforge.kernels.validation` (same inputs
accepted, same errors, on every path); then CUDA tensors run the Triton kernels (`mathforge.kernels.<op>`,
registered as `torch.ops.mathforge.*` custom ops so torch.compile keeps them in its graph) and CPU tensors the
torch references in `mathforge.kernels.reference`. Set `MATHFORGE_CHECK=1` to validate loss targets.
"""

from mathforge.kernels.attention import varlen_attention
from mathforge.kernels.functional import apply_rope, cross_entropy, fused_linear_cross_entropy, rms_norm, swiglu

__all__ = ["apply_rope", "cross_entropy", "fused_linear_cross_entropy", "rms_norm", "swiglu", "varlen_attention"]
