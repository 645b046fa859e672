#!/usr/bin/env python3
"""Turn monocular videos of a face into an IMavatar-format subject (see docs/PREPROCESSING.md)."""

from dynavatar.cli.preprocess import main

if __name__ == "__main__":
    main()
