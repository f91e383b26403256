"""Changing settings: the one path the Settings tab and ``POST /sdapi/v1/options`` share (and the check a job's
``override_settings`` gets): the same validation, the same messages, one atomic save to ``config.json``."""
from __future__ import annotations

from typing import Any

from modules import sd_models, shared
from modules.errors import UserInputError
from modules.shared import opts


def check(values: dict[str, Any], field: str, is_api: bool = True) -> None:
    """Raise a UserInputError naming ``field`` and the setting when ``values`` cannot be applied: an unknown key,
    one the API may not change (``restrict_api``; the page may), an unknown checkpoint, a value of the wrong type."""
    unknown = [key for key in values if key not in opts.data_labels]
    if unknown:
        raise UserInputError(f"{field}: unknown setting(s) {', '.join(map(repr, unknown))}")
    restricted = [key for key in values if is_api and opts.data_labels[key].restrict_api]
    if restricted:
        raise UserInputError(f"{field}: setting(s) {', '.join(map(repr, restricted))} cannot be changed through the API")
    checkpoint = values.get("sd_model_checkpoint")
    if checkpoint and sd_models.get_closet_checkpoint_match(str(checkpoint)) is None:
        raise UserInputError(f"{field}: unknown checkpoint {checkpoint!r}; choose one of: "
                             f"{', '.join(sd_models.checkpoint_tiles())}")
    for key, value in values.items():
        try:
            opts.cast_value(key, value)
        except (TypeError, ValueError):
            raise UserInputError(f"{field}: {key!r} cannot be {value!r}") from None


def apply(values: dict[str, Any], field: str = "options", is_api: bool = True) -> sd_models.CheckpointInfo | None:
    """Check, then set every value but the checkpoint; returns the checkpoint to load (in a queue job: loading takes
    the device), if one is asked for."""
    check(values, field, is_api)
    for key, value in values.items():
        if key != "sd_model_checkpoint":
            opts.set(key, value, is_api=is_api)
    checkpoint = values.get("sd_model_checkpoint")
    return sd_models.get_closet_checkpoint_match(str(checkpoint)) if checkpoint else None


def save() -> None:
    """Write config.json atomically (a failure, e.g. a full disk, raises OSError and leaves the old file whole)."""
    opts.save(shared.config_filename())
