"""A1111 ``modules.sd_samplers_common``: the live-preview latent store extensions call."""
from __future__ import annotations

from typing import Any


def store_latent(decoded: Any) -> None:
    """Make ``decoded`` (latents of the image being sampled, batch first) the live preview."""
    from modules.shared import state

    state.current_latent = decoded[0] if getattr(decoded, "ndim", 0) == 4 else decoded
    state.id_live_preview += 1
