"""Pure loss functions: arrays in, `(scalar loss, metrics dict)` out."""
