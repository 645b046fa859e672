#!/usr/bin/env python3
"""Train a recipe for a wall-clock budget and evaluate it at fixed moments (test PSNR against time).

Run with --help for the options.
"""

import sys

from dynavatar.cli.quality_vs_time import main

if __name__ == "__main__":
    sys.exit(main())
