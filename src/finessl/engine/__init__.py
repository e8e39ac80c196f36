"""The engine: the training loop, its callbacks, optimizers and schedules, sampling, timing."""
