#!/usr/bin/env python3
"""View and drive a trained avatar in the browser (docs/VIEWER.md)."""

import sys

from dynavatar.cli.viewer import main

if __name__ == "__main__":
    sys.exit(main())
