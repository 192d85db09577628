"""Consistency models and diffusion models in JAX: iCT, sLCT, ECT, CD, sCT, sCD, MeanFlow and EDM
training, their samplers and evaluation, and LCSC checkpoint merging (README, "Architecture")."""
