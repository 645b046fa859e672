#!/usr/bin/env python3
"""Train, resume, evaluate or reenact a DynAvatar head avatar. See README.md, or run with --help."""

import sys

from dynavatar.cli.exp_runner import main

if __name__ == "__main__":
    sys.exit(main())
