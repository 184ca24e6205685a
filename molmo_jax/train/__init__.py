"""Training: losses, optimizers and the trainer."""
