"""mathforge.kernels: Triton ops with torch references, autograd and attention dispatch."""
