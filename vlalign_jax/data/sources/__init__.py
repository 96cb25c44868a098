"""Data sources: one module per on-disk format, plus the built-in synthetic dataset."""
