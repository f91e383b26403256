"""The generation engine: conditioning, prompt chunks, the sampling loop, the denoiser call, live previews."""
