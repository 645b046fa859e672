"""The avatar: canonical Gaussians (`point_schedule`), the three networks (`networks`), the deformation
and rendering of a frame (`avatar`), and building one from a conf (`build`)."""
