#!/usr/bin/env python3
"""Check an IMavatar-format dataset and report every problem at once (each naming file and frame).

Run with --help for the options."""

import sys

from dynavatar.cli.check_dataset import main

if __name__ == "__main__":
    sys.exit(main())
