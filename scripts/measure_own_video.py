#!/usr/bin/env python3
"""Own videos end to end: test PSNR of avatars trained on preprocessed generated videos against exact
tracking (see docs/PREPROCESSING.md, Accuracy). Run with --help for the options."""

from dynavatar.cli.measure_own_video import main

if __name__ == "__main__":
    main()
