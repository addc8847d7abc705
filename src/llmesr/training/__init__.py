"""Batches, negative sampling, the trainer and checkpoints."""
