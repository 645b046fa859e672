"""Evaluation: test-time input fitting (`fitting`), the metrics report of the test split (`report`),
videos, reenactment and .ply export of a posed avatar (`animation`), and the evaluator that loads a
checkpoint and composes them (`evaluator`). The metrics themselves live in `dynavatar.metrics`; an
avatar is loaded from a checkpoint by `dynavatar.model.build.load_avatar`."""
