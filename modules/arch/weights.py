"""Loading a state dict into one of these architectures: every key present and of its shape, or a message naming
the file."""
from __future__ import annotations

from typing import Any

from modules.errors import UnsupportedModelFile


def load_exactly(model: Any, state: dict[str, Any], name: str, what: str) -> Any:
    """``model`` with the weights of ``state`` (from the file ``name``), in eval mode and without gradients."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that does not fit
        reason = " ".join(line.strip() for line in str(e).splitlines()[1:2])[:200]
        raise UnsupportedModelFile(f"{name}: not the {what} ({reason})") from None
    if result.missing_keys or result.unexpected_keys:
        wrong = result.missing_keys or result.unexpected_keys
        raise UnsupportedModelFile(f"{name}: not the {what} ({len(result.missing_keys)} weights missing, "
                                   f"{len(result.unexpected_keys)} unexpected, e.g. {wrong[0]})")
    return model.eval().requires_grad_(False)
