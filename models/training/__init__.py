"""Training: the run as a stage (id, preflight, resume, publish), the loop and its steps, batches, checkpoints,
kernels for the loss, and scale-out with torch.distributed."""
