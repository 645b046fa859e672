"""The avatar: the three networks (`networks`), the deformation and rendering of frames (`avatar`),
per-frame refinement of tracked inputs (`frame_inputs`), and building one from a conf or a
checkpoint (`build`)."""
