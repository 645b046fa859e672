#!/usr/bin/env python3
"""Measure training and animation throughput of the avatar on a generated subject.

Run with --help for the options.
"""

import sys

from dynavatar.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
