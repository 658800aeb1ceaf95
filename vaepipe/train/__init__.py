"""Training: the objective, the one training loop, checkpoints and the device."""
