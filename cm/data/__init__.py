"""Training data: sources (digits, tfds, npz, folder, latents), the batch at a step, background
prefetch and sLCT's OT coupling of data and noise."""
