"""Image and text data: preprocessing transforms and dataset sources."""
