"""mathforge.kernels: Triton ops with torch references, autograd and attention dispatch.

Public API (stable names): `cross_entropy`, `fused_linear_cross_entropy`, `rms_norm`, `swiglu`,
`apply_rope`. On CPU tensors they run the torch references in `mathforge.kernels.reference`.
"""

from mathforge.kernels.reference import apply_rope, cross_entropy, fused_linear_cross_entropy, rms_norm, swiglu

__all__ = ["apply_rope", "cross_entropy", "fused_linear_cross_entropy", "rms_norm", "swiglu"]
