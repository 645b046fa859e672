#!/usr/bin/env python3
"""How well preprocessing's FLAME tracking recovers a generated head's motion (see docs/PREPROCESSING.md).

Run with --help for the options."""

from dynavatar.cli.tracking_accuracy import main

if __name__ == "__main__":
    main()
