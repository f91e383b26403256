"""Cheap live previews: a fixed linear map from SD 1.x latent channels to RGB (A1111's "Approx cheap")."""
from __future__ import annotations

# Rows: latent channels 0..3; columns: R, G, B.
SD1_LATENT_RGB = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]


def latent_to_image(latent):
    """One latent (4, h, w) -> a PIL image at the output size (8x, nearest neighbour)."""
    import numpy as np
    import torch
    from PIL import Image

    coefs = torch.tensor(SD1_LATENT_RGB, dtype=torch.float32)
    rgb = torch.einsum("lhw,lr->hwr", latent.detach().float().cpu(), coefs)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array))
    return image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST)
