"""sdlab: a reproducible DVC pipeline from web images to a trained latent diffusion model."""

__version__ = "0.1.0"
