"""Live previews of the latents being sampled, by A1111's methods (setting ``show_progress_type``):

- "Approx cheap": the family's fixed linear map from latent channels to RGB, at no cost;
- "TAESD": the Tiny AutoEncoder's decoder for the latent space (``taesd_decoder.pth`` for SD 1.x/2.x,
  ``taesdxl_decoder.pth`` for SDXL, in ``models/VAE-taesd``; downloaded on first use when the setting
  ``download_official_weights`` is on), about 3 ms a preview on a GPU, run on a side CUDA stream;
- "Full": the model's own VAE.

A method that cannot run (no TAESD file) falls back to "Approx cheap"; the console says why once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from modules.families.spec import LatentFormat

log = logging.getLogger("webui")
METHODS = ("Approx cheap", "TAESD", "Full")
_load_lock = threading.Lock()  # two preview requests must not load the same decoder twice


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


def _to_image(images):
    """(1, 3, H, W) in -1..1 -> PIL."""
    import numpy as np
    from PIL import Image

    array = ((images[0].float().cpu().permute(1, 2, 0) + 1) / 2).clamp(0, 1).mul(255).round().byte().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def build_taesd_decoder(state: dict):
    """diffusers' ``DecoderTiny`` from a TAESD decoder file's tensors (the original ``nn.Sequential`` layout: index 0
    is the clamp, which ``DecoderTiny`` applies in its forward, so index N is its ``layers.N-1``)."""
    from diffusers.models.autoencoders.vae import DecoderTiny

    decoder = DecoderTiny(in_channels=4, out_channels=3, num_blocks=(3, 3, 3, 1), block_out_channels=(64, 64, 64, 64),
                          upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest")
    renamed = {}
    for key, value in state.items():
        index, _, rest = key.removeprefix("decoder.layers.").partition(".")
        renamed[f"layers.{int(index) - (0 if key.startswith('decoder.layers.') else 1)}.{rest}"] = value
    decoder.load_state_dict(renamed, strict=True)
    return decoder.eval().requires_grad_(False)


def _taesd(model: Any):
    """The model's TAESD decoder, loaded once (kept in ``model.extra``); None when its file is absent."""
    from modules.errors import UserInputError
    from modules.loading import model_catalog, model_files

    if "taesd" in model.extra:  # loaded, or known to be absent
        return model.extra["taesd"]
    weights = next((w for w in model_catalog.PREVIEW_DECODERS if w.name == model.family.latent.preview_decoder), None)
    if weights is None:
        return None
    with _load_lock:
        if "taesd" in model.extra:  # another request loaded it meanwhile
            return model.extra["taesd"]
        try:
            path = model_catalog.ensure(weights)
        except UserInputError as e:
            log.warning("Live preview: %s; using Approx cheap", e)
            model.extra["taesd"] = None
            return None
        with model_files.loading(path, "TAESD decoder"):
            state = model_files.load_pickle(path) if model_files.detect_format(path) != model_files.SAFETENSORS \
                else model_files.read_state_dict(path)
            decoder = build_taesd_decoder(state).to(device=model.device, dtype=model.dtype)
        model.extra["taesd"] = decoder
        return decoder


def decode_preview(latent, model: Any, method: str = "Approx cheap"):
    """One latent (C, h, w) of ``model`` -> a PIL preview by ``method`` (see the module docstring)."""
    import torch

    if method == "Full":
        from modules.engine import sampling

        return _to_image(sampling.decode(model, latent[None].float()) * 2 - 1)
    decoder = _taesd(model) if method == "TAESD" else None
    if decoder is None:
        return latent_to_image(latent, model.family.latent)
    device = next(decoder.parameters()).device
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))
        images = decoder(latent[None].to(device=device, dtype=next(decoder.parameters()).dtype))
    if stream is not None:
        stream.synchronize()  # this thread waits for the preview only, never for the sampling steps queued after it
    return _to_image(images)


def current_preview(state, model, method: str = "Approx cheap"):
    """The live preview of the job now running (``state.current_latent``) for ``model``; None when there is none."""
    if state.current_latent is None or model is None:
        return None
    return decode_preview(state.current_latent, model, method)
