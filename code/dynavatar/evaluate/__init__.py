"""Evaluation: test-time input fitting (`fitting`) and the evaluator that writes images, metrics,
videos, reenactments and exports (`evaluator`). The metrics themselves live in `dynavatar.metrics`."""
