"""Cheap live previews: the family's fixed linear map from latent channels to RGB (A1111's "Approx cheap")."""
from __future__ import annotations

from modules.families.spec import LatentFormat


def latent_to_image(latent, latent_format: LatentFormat):
    """One latent (C, h, w) -> a PIL image at the output size (nearest neighbour)."""
    import numpy as np
    import torch
    from PIL import Image

    coefs = torch.tensor(latent_format.preview_rgb, dtype=torch.float32)
    rgb = torch.einsum("lhw,lr->hwr", latent.detach().float().cpu(), coefs)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array))
    scale = latent_format.downscale
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def current_preview(state, model):
    """The live preview of the job now running (``state.current_latent``) for ``model``; None when there is none."""
    if state.current_latent is None or model is None:
        return None
    return latent_to_image(state.current_latent, model.family.latent)
