"""Training: train state, optimiser, sharded step, checkpoints, the loop and its metrics."""
