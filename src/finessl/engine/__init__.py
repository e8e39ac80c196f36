"""Training loop, sampling, distributed helpers and checkpoints."""
