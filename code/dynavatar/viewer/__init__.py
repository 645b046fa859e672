"""The interactive viewer: a trained avatar rendered from a browser's camera and driven by sliders or
by a video's FLAME tracking (docs/VIEWER.md). Needs the `viewer` extra (viser)."""
