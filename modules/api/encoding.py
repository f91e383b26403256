"""Images in and out of the API: base64 with or without a ``data:image/...;base64,`` prefix in, bare base64
of the file bytes (``samples_format``, infotext included) out."""
from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image

from modules import images
from modules.errors import UserInputError

DATA_URI = re.compile(r"^data:([^;,]*)(;[^,]*)?,", re.IGNORECASE)


def decode_image(text: str, field: str = "image") -> Image.Image:
    """An image from a request field; every problem is a :class:`UserInputError` naming ``field``."""
    if not isinstance(text, str) or not text.strip():
        raise UserInputError(f"{field}: no image given")
    text = text.strip()
    if text.lower().startswith(("http://", "https://")):
        raise UserInputError(f"{field}: image URLs are not fetched; send the image as base64")
    match = DATA_URI.match(text)
    if match:
        mime, options = match.group(1).lower(), (match.group(2) or "").lower()
        if not mime.startswith("image/"):
            raise UserInputError(f"{field}: the data URI has MIME type {mime or 'none'!r}; an image/* type is needed")
        if ";base64" not in options:
            raise UserInputError(f"{field}: the data URI is not base64-encoded")
        text = text[match.end():]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserInputError(f"{field}: invalid base64 (Invalid encoded image)") from None
    try:
        return images.read(io.BytesIO(data))
    except UserInputError as e:
        raise UserInputError(f"{field}: {str(e).removeprefix('image: ')}") from None


def encode_image(image: Image.Image, extension: str | None = None) -> str:
    """Bare base64 of ``image`` as a file in ``samples_format``; its infotext (``parameters``) and other string
    info items travel inside (PNG text chunks, or EXIF UserComment for JPEG/WebP)."""
    from modules.shared import opts

    extension = (extension or opts.samples_format or "png").lower()
    info = dict(getattr(image, "info", {}) or {})
    buffer = io.BytesIO()
    images.write_image_with_geninfo(image, info.get("parameters"), buffer, extension, existing_pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
