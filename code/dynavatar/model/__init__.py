"""The avatar: the three networks (`networks`), the deformation of frames (`avatar`), the cache of
what does not depend on the frame (`canonical_cache`), activation recomputation (`recompute`), the
networks' arithmetic and compilation (`precision`, `compiled`), posing replayed from CUDA graphs
when rendering (`pose_graph`), rendering Gaussians (`gaussians`, `rendering`), per-frame
refinement of tracked inputs (`frame_inputs`), and building one from a conf or a checkpoint
(`build`)."""
