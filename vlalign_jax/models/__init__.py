"""Flax linen modules: transformer blocks and the vision-language towers built from them."""
