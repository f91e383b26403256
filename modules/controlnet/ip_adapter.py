"""IP-Adapter as a ControlNet unit, as the A1111 extension offers it: the model is an official ``ip-adapter_*``
file in models/ControlNet (``.safetensors`` with ``image_proj.*``/``ip_adapter.*`` keys, or the ``.bin`` with those
two dicts), the preprocessor a CLIP vision encoder (``ip-adapter_clip_h``: ViT-H, for ``ip-adapter_sd15`` and the
SDXL ``*_vit-h`` files; ``ip-adapter_clip_g``: ViT-bigG, for ``ip-adapter_sdxl``), fetched from h94/IP-Adapter on
first use.

For one job, diffusers' own IP-Adapter loader puts the image projection and the IP attention processors into the
UNet (:func:`attach`); :func:`detach` puts the UNet's own processors back. The reference image's embedding goes to
the UNet with every call (``added_cond_kwargs["image_embeds"]``): the image's for the prompt rows, a blank image's
for the negative prompt's rows (zeros for the plain adapter, the encoder's output for a black image for the
"plus" and full-face ones). The unit's weight is the IP attention's scale; outside its guidance start and end it is 0.
Such a job calls the UNet eagerly (:func:`eager_unet`: no CUDA graphs of the fast path).
FaceID adapters need insightface and are refused.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from modules.errors import UserInputError
from modules.loading import model_files
from modules.loading.model_catalog import HubFolder

ENCODERS = {
    "ip-adapter_clip_h": HubFolder("CLIP ViT-H image encoder (IP-Adapter)", "annotator/ip-adapter", "h94/IP-Adapter",
                                   subfolder="models/image_encoder"),
    "ip-adapter_clip_g": HubFolder("CLIP ViT-bigG image encoder (IP-Adapter)", "annotator/ip-adapter",
                                   "h94/IP-Adapter", subfolder="sdxl_models/image_encoder"),
}
_lock = threading.Lock()
_read: dict[str, tuple[tuple, dict]] = {}  # path -> (size and mtime, the adapter's state dicts), kept in RAM


def encoder_name(module: str) -> str | None:
    """The encoder a preprocessor (its canonical name: ``preprocessors.canonical``) stands for; None when it is not
    an IP-Adapter preprocessor."""
    return module if module in ENCODERS else None


def is_ip_adapter(path: str) -> bool:
    """Whether a file in models/ControlNet is an IP-Adapter (by its keys; pickles only when named so)."""
    if os.path.isdir(path):
        return False
    if model_files.detect_format(path) == model_files.SAFETENSORS:
        return any(key.startswith(("image_proj.", "ip_adapter.")) for key in model_files.read_safetensors_header(path))
    return "ip-adapter" in os.path.basename(path).lower().replace("_", "-")


def read(path: str) -> dict:
    """The ``{"image_proj": ..., "ip_adapter": ...}`` state dicts diffusers' loader takes (read once while the file
    is unchanged)."""
    stat = os.stat(path)
    signature = (stat.st_size, stat.st_mtime_ns)
    with _lock:
        cached = _read.get(path)
        if cached is None or cached[0] != signature:
            _read[path] = (signature, _read_file(path))
        return _read[path][1]


def _read_file(path: str) -> dict:
    if model_files.detect_format(path) == model_files.SAFETENSORS:
        flat = model_files.read_state_dict(path)
        state: dict = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = value
    else:
        state = model_files.load_pickle(path)
    name = os.path.basename(path)
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise UserInputError(f"{name}: not an IP-Adapter (no image_proj and ip_adapter weights)")
    projection = state["image_proj"]
    if "perceiver_resampler.proj_in.weight" in projection or (
            "norm.weight" in projection and not {"proj.weight", "latents", "proj.3.weight"} & set(projection)):
        raise UserInputError(f"{name}: IP-Adapter FaceID needs insightface's face embeddings, which are not supported")
    return state


def takes_hidden_states(state: dict) -> bool:
    """The plain adapter takes the encoder's projected embedding; "plus" and full-face ones its penultimate hidden
    states."""
    return "proj.weight" not in state["image_proj"]


def embedding_width(state: dict) -> int:
    """The encoder width the adapter was trained with (projection width or hidden size)."""
    projection = state["image_proj"]
    if "proj.weight" in projection:
        return projection["proj.weight"].shape[1]
    if "proj.0.weight" in projection:
        return projection["proj.0.weight"].shape[1]
    return projection["proj_in.weight"].shape[1]


def context_width(state: dict) -> int:
    """The text width of the UNet the adapter was trained for (its IP key projections' input)."""
    return state["ip_adapter"]["1.to_k_ip.weight"].shape[1]


def load_encoder(module: str) -> tuple[Any, Any]:
    """The CLIP vision encoder and its processor (the official encoder folders have no preprocessor config: CLIP's
    own 224-pixel preprocessing)."""
    from modules.controlnet import annotators

    return annotators.load_hub_model(ENCODERS[encoder_name(module)], "CLIPVisionModelWithProjection",
                                     default_processor="CLIPImageProcessor")


@dataclass
class Adapter:
    """One IP-Adapter unit ready for the engine: its embeddings for prompt and negative rows."""
    positive: Any  # (1, 1, width) or (1, 1, tokens, hidden)
    negative: Any
    weight: float
    guidance_start: float
    guidance_end: float
    applies_to: Callable[[bool], bool] = lambda hires_pass: True  # the unit's hires fix option

    def active(self, step: int, total_steps: int, hires_pass: bool = False) -> bool:
        progress = step / max(total_steps, 1)
        return self.weight != 0 and self.guidance_start <= progress <= self.guidance_end and \
            self.applies_to(hires_pass)


def embed(module: str, state: dict, picture: Any, name: str, resize_mode: str = "Crop and Resize") -> tuple[Any, Any]:
    """(positive, negative) embeddings of ``picture`` for the adapter ``state``; the picture is first fitted to the
    encoder's square input by the unit's resize mode (CLIP's own preprocessing is "Crop and Resize")."""
    import torch
    from PIL import Image

    from modules.controlnet import annotators, units

    encoder, processor = load_encoder(module)
    hidden = takes_hidden_states(state)
    width = encoder.config.hidden_size if hidden else encoder.config.projection_dim
    if width != embedding_width(state):
        raise UserInputError(f"IP-Adapter {name} takes {embedding_width(state)}-wide image embeddings; the "
                             f"{encoder_name(module)} encoder makes {width}-wide ones (ViT-H: ip-adapter_clip_h, "
                             f"ViT-bigG: ip-adapter_clip_g)")
    crop = processor.crop_size or {"height": 224, "width": 224}
    pictures = [units.fit(picture.convert("RGB"), crop["width"], crop["height"], resize_mode)]
    if hidden:
        pictures.append(Image.new("RGB", pictures[0].size))  # the negative rows see a black image
    pixels = processor(images=pictures, return_tensors="pt")["pixel_values"]
    output = annotators.run_on_device(encoder, {"pixel_values": pixels, "output_hidden_states": hidden})
    if hidden:
        states = output.hidden_states[-2].float().cpu()
        return states[:1, None], states[1:, None]
    embeds = output.image_embeds.float().cpu()[:, None]
    return embeds, torch.zeros_like(embeds)


def attach(unet: Any, states: list[dict], names: list[str]) -> None:
    """Put the adapters into ``unet`` for one job (diffusers' loader); :func:`detach` undoes it."""
    detach(unet)
    if unet.config.encoder_hid_dim_type is not None:
        raise UserInputError("IP-Adapter: this checkpoint's UNet already projects its text embeddings; not supported")
    saved = (dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
    try:
        with model_files.loading(", ".join(names), "IP-Adapter for this checkpoint"):
            unet._load_ip_adapter_weights(states)  # diffusers' own conversion of the official layouts
    except BaseException:
        unet.ip_adapter_restore = saved
        detach(unet)
        raise
    unet.ip_adapter_restore = saved


def detach(unet: Any) -> None:
    """The UNet's own attention processors and projection back (no-op when no adapter is attached)."""
    saved = getattr(unet, "ip_adapter_restore", None)
    if saved is None:
        return
    processors, projection, kind = saved
    unet.encoder_hid_proj = projection  # first: a "plus" projection has attention layers of its own
    unet.config.encoder_hid_dim_type = kind
    unet.set_attn_processor(processors)
    unet.ip_adapter_restore = None


def eager_unet(unet: Any, call: Any) -> Any:
    """The UNet called as it is, for a job with adapters: their modules are new each job, so no CUDA graph of the
    fast path may be kept of (or replayed over) them."""
    from modules.engine import denoiser

    return denoiser.call_unet(unet, call)


def _ip_processors(unet: Any) -> list:
    return [processor for processor in unet.attn_processors.values() if hasattr(processor, "to_k_ip")]


def embeds_hook(unet: Any, adapters: list[Adapter], hires_pass: Callable[[], bool] = lambda: False):
    """The ``before_unet`` hook: each adapter's embeddings for every row (the negative prompt's rows, one per image,
    come last when guided) and its scale for this step (0 outside its steps and hires fix passes)."""
    import torch

    processors: list = []  # the IP attention processors, found at the first call (attach comes after this)

    def add_embeds(call) -> None:
        if not processors:
            processors.extend(_ip_processors(unet))
        rows = call.x.shape[0]
        negatives = len(call.rows) if call.guided else 0
        embeds = []
        for adapter in adapters:
            positive = adapter.positive.to(call.x.device, call.x.dtype)
            negative = adapter.negative.to(call.x.device, call.x.dtype)
            embeds.append(torch.cat([positive.expand(rows - negatives, *positive.shape[1:]),
                                     negative.expand(negatives, *negative.shape[1:])]))
        hires = hires_pass()
        scales = [adapter.weight if adapter.active(call.step, call.total_steps, hires) else 0.0 for adapter in adapters]
        for processor in processors:
            processor.scale = scales
        added = dict(call.kwargs.get("added_cond_kwargs") or {}, image_embeds=embeds)
        call.kwargs = {**call.kwargs, "added_cond_kwargs": added}

    return add_embeds
