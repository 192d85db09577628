"""Consistency models and diffusion models in JAX: iCT, sLCT, EDM, LCSC."""
