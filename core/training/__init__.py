"""Training: the run flow, the trainer factory, the Lightning module and data module, resumable
sampling and signal handling, the checkpoint format, the run directory and model saving/loading."""
