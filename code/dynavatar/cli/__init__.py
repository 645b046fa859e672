"""Command-line entry points (the scripts/ folder holds thin wrappers)."""
