"""The synthetic subject generator: a FLAME head animated, textured and rendered with its own mesh
renderer into an IMavatar-format subject (tests, the demo, benchmarks)."""

from .subject import DEFAULT_TEST_VIDEOS, DEFAULT_TRAIN_VIDEOS, ensure_synthetic_subject, generate_subject

__all__ = ["DEFAULT_TEST_VIDEOS", "DEFAULT_TRAIN_VIDEOS", "ensure_synthetic_subject", "generate_subject"]
