"""The single-image multi-scale diffusion engine."""
