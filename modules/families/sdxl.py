"""SDXL base (two text encoders) and the SDXL refiner (OpenCLIP bigG only): recognised so that the user is told
what the checkpoint is; loading comes with the model-families work."""
from __future__ import annotations

from modules.families.spec import ModelFamily


def _has(shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


SDXL = ModelFamily(
    key="sdxl", label="SDXL", base="sdxl", supported=False, note="SDXL support is coming", default_size=1024,
    matches_checkpoint=lambda shapes: _has(shapes, "conditioner.embedders.1.model."),
    matches_diffusers=lambda unet: unet.get("addition_embed_type") == "text_time" and unet.get("cross_attention_dim") == 2048,
)
SDXL_REFINER = ModelFamily(
    key="sdxl-refiner", label="SDXL refiner", base="sdxl", supported=False, note="SDXL support is coming",
    default_size=1024,
    matches_checkpoint=lambda shapes: _has(shapes, "conditioner.embedders.0.model.") and not _has(
        shapes, "conditioner.embedders.1.model.") and "model.diffusion_model.label_emb.0.0.weight" in shapes,
    matches_diffusers=lambda unet: unet.get("addition_embed_type") == "text_time" and unet.get("cross_attention_dim") != 2048,
)
FAMILIES = (SDXL, SDXL_REFINER)
