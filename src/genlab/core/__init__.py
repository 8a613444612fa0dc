"""Primitives every layer uses: errors, safe files and checkpoints, device and seeding, progress lines, the
machine fingerprint, the pipeline's file names, params key declarations, and image grids/plots."""
