"""Reading the infotext an image file carries: the PNG ``parameters`` chunk, the EXIF UserComment of JPEG/WebP, a
GIF comment, NovelAI's fields (``modules.images.read_info_from_image`` is this, under A1111's name)."""
from __future__ import annotations

from PIL import Image


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict]:
    """The infotext stored in an image (PNG chunk, EXIF UserComment or GIF comment) and its other info items."""
    items = dict(image.info or {})
    geninfo = items.pop("parameters", None)
    if geninfo is None and "exif" in items:
        comment = image.getexif().get_ifd(0x8769).get(0x9286)
        if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
            body = comment[8:]
            geninfo = body.decode("utf-16-be" if body[:1] == b"\0" else "utf-16-le", errors="ignore")
        elif isinstance(comment, bytes) and comment.startswith(b"ASCII\0\0\0"):
            geninfo = comment[8:].decode("ascii", errors="ignore")
        elif isinstance(comment, str):
            geninfo = comment
    if geninfo is None and "comment" in items:
        comment = items["comment"]
        geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    if items.get("Software") == "NovelAI" and "Comment" in items:
        geninfo = _novelai_to_infotext(items)
    return geninfo, items


def _novelai_to_infotext(items: dict) -> str:
    import json

    data = json.loads(items["Comment"])
    sampler = {"k_euler_ancestral": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "ddim": "DDIM"}.get(data.get("sampler"), "Euler a")
    return (f"{items.get('Description', '')}\nNegative prompt: {data.get('uc', '')}\n"
            f"Steps: {data.get('steps')}, Sampler: {sampler}, CFG scale: {data.get('scale')}, Seed: {data.get('seed')}, "
            f"Size: {items.get('Width', 0)}x{items.get('Height', 0)}, Clip skip: 2, ENSD: 31337")
