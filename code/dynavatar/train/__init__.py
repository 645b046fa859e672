"""Training: the runner (`trainer`), the point strategies (`strategy`), the learning-rate and batch
rules (`schedule`), the optimizer across point edits (`optimizer_state`), the non-finite guard
(`guard`), the experiment folder and checkpoints of a run (`checkpointing`) and where the training
images live (`placement`)."""
