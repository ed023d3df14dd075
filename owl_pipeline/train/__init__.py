"""Training: one loop (accelerate) for both stages."""
