"""Evaluation: metrics (`metrics`, `lpips`), test-time input fitting (`fitting`), and the evaluator that
writes images, metrics, videos, reenactments and exports (`evaluator`)."""
