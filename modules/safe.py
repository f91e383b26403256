"""A1111 ``modules.safe`` for extensions: every load goes through ``torch.load(weights_only=True)``. The names that
meant "unrestricted pickle" in A1111 (``unsafe_torch_load``, ``Extra``) are kept so extensions import, but they load
tensors and plain containers only."""
from __future__ import annotations

import contextlib
from typing import Any


def load(filename: str, *args: Any, **kwargs: Any) -> Any:
    from modules.loading import model_files

    return model_files.load_pickle(filename)


def load_with_extra(filename: str, extra_handler: Any = None, *args: Any, **kwargs: Any) -> Any:
    return load(filename)


unsafe_torch_load = load


@contextlib.contextmanager
def Extra(handler: Any):  # noqa: N802  (A1111's name)
    """Accepted for compatibility; it does not widen what may be unpickled."""
    yield
