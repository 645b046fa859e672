"""Training: losses (`losses`), VGG perceptual loss (`vgg`), per-frame input refinement
(`frame_inputs`), the experiment layout and checkpoints (`checkpoints`), and the runner (`trainer`)."""
