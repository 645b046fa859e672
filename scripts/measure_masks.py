#!/usr/bin/env python3
"""Mask IoU per video on generated videos, per background kind (see docs/PREPROCESSING.md, Accuracy)."""

from dynavatar.preprocess.mask_accuracy import main

if __name__ == "__main__":
    main()
