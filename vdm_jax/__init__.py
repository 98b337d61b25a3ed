"""vdm_jax: video diffusion models in JAX/Flax NNX (Video Diffusion Models, Ho, Salimans et al. 2022)."""

__version__ = "0.1.0"
