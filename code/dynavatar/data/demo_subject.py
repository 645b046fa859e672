"""Generating the synthetic subject a conf asks for (`dataset.synthetic = true`) when it is missing.

The implementation lives beside the generator; this name is kept for the runner's import.
"""

from .synthetic_subject import ensure_synthetic_subject

__all__ = ["ensure_synthetic_subject"]
