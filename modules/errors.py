"""Error reporting helpers (A1111 names: ``report``, ``display``)."""
from __future__ import annotations

import logging
import traceback

log = logging.getLogger("webui")


class UserInputError(ValueError):
    """Bad input that the user can fix; the message names the field and the allowed values.
    Subclasses cover unusable model files, so the queue reports all of them without a traceback."""


class UnsupportedModelFile(UserInputError):
    """The file is not a format we load (or not a model at all)."""


def report(message: str, *, exc_info: bool = False) -> None:
    log.error(message, exc_info=exc_info)


def display(e: BaseException, task: str, *, full_traceback: bool = False) -> None:
    log.error("%s: %s: %s", task, type(e).__name__, e)
    if full_traceback:
        log.error("".join(traceback.format_exception(e)))
