"""mathforge.trainer: the lean model, data and sequence packing, and the training loop."""
