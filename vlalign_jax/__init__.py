"""vlalign-jax: vision-language alignment models (CLIP, SigLIP 2, DeGLA, FG-CLIP, CLIP-VG) in JAX/Flax."""

__version__ = "0.1.0"
