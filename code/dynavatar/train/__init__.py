"""Training: the coarse-to-fine strategy (`strategy`) and the runner (`trainer`)."""
