#!/usr/bin/env python3
"""Generate a synthetic subject in the IMavatar layout (images, soft masks, semantic maps, flame_params.json).

Run with --help for the options."""

import sys

from dynavatar.cli.make_synthetic_subject import main

if __name__ == "__main__":
    sys.exit(main())
