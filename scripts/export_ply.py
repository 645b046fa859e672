#!/usr/bin/env python3
"""Export a trained avatar (canonical or one frame) as a standard 3D Gaussian splatting .ply."""

import sys

from dynavatar.cli.export_ply import main

if __name__ == "__main__":
    sys.exit(main())
