#!/usr/bin/env python3
"""Benchmark the rasterizer backends: forward ms, forward+backward ms and peak memory per scene.

Run with --help for the options."""

import sys

from dynavatar.cli.bench_rasterizer import main

if __name__ == "__main__":
    sys.exit(main())
