"""CLIP interrogator: a BLIP caption of the image, followed by the terms of the category lists that CLIP
ranks closest to it (A1111's "Interrogate CLIP").

Weights are transformers model folders under ``models/interrogate``:
- ``blip/``: a BLIP captioning model (``BlipForConditionalGeneration``, e.g. Salesforce/blip-image-captioning-large);
- ``clip/``: a CLIP model (``CLIPModel``, e.g. openai/clip-vit-large-patch14);
- ``*.txt`` next to them: category lists, one term per line (``mediums.txt``, ``movements.txt``, ...). Each
  file adds its best ``TOP_TERMS`` terms; a file name ending in ``-<k>`` (``flavors-3.txt``) adds ``k``.
With ``download_official_weights`` on (the default) what is missing is downloaded on first use: BLIP and CLIP from
the Hugging Face hub (``HUB_MODELS``), A1111's term lists from its repository; otherwise, or when that fails, the
missing files are reported by name with where to get them (HTTP 503 from the API).
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any

from modules import paths

TOP_TERMS = 1
HUB_MODELS = (("blip", "Salesforce/blip-image-captioning-large"), ("clip", "openai/clip-vit-large-patch14"))
TERM_LISTS_URL = "https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui/v1.10.1/interrogate"
TERM_LISTS = ("artists.txt", "flavors.txt", "mediums.txt", "movements.txt")
CAPTION_MAX_TOKENS = 48
REQUIRED_FILES = ("config.json", "model.safetensors")


class UnknownInterrogator(LookupError):
    status_code = 404


class InterrogatorFilesMissing(RuntimeError):
    status_code = 503


def folder() -> str:
    return os.path.join(paths.models_path, "interrogate")


def missing_files() -> list[str]:
    """Paths of the files the CLIP interrogator needs that are not there."""
    missing = [os.path.join(folder(), sub, name) for sub in ("blip", "clip") for name in REQUIRED_FILES
               if not os.path.isfile(os.path.join(folder(), sub, name))]
    if not category_files():
        missing.append(os.path.join(folder(), "<category>.txt (at least one term list)"))
    return missing


def where_to_get() -> str:
    return (", ".join(f"{sub}/ from https://huggingface.co/{repo}" for sub, repo in HUB_MODELS)
            + f", term lists from {TERM_LISTS_URL}/")


def missing_error(missing: list[str]) -> InterrogatorFilesMissing:
    return InterrogatorFilesMissing(f"CLIP interrogator files are missing: {', '.join(missing)}; get {where_to_get()} "
                                    f"(downloaded on first use when download_official_weights is on and the hub can "
                                    f"be reached)")


def fetch_missing() -> None:
    """Download what is missing into models/interrogate: the two model folders (their config, tokenizer and
    model.safetensors files, through huggingface_hub) and, when there is no term list, A1111's."""
    from huggingface_hub import snapshot_download

    from modules.loading import model_catalog

    for sub, repo in HUB_MODELS:
        target = os.path.join(folder(), sub)
        if not all(os.path.isfile(os.path.join(target, name)) for name in REQUIRED_FILES):
            snapshot_download(repo, local_dir=target, allow_patterns=["*.json", "*.txt", "model.safetensors"])
    if not category_files():
        for name in TERM_LISTS:
            model_catalog.ensure(model_catalog.OfficialWeights(f"CLIP interrogator {name}", "interrogate", name,
                                                               f"{TERM_LISTS_URL}/{name}"))


def category_files() -> list[str]:
    if not os.path.isdir(folder()):
        return []
    return sorted(os.path.join(folder(), name) for name in os.listdir(folder()) if name.endswith(".txt"))


def _terms_per_file(path: str) -> int:
    match = re.search(r"-(\d+)$", os.path.splitext(os.path.basename(path))[0])
    return int(match.group(1)) if match else TOP_TERMS


class ClipInterrogator:
    """Loads both models on first use and keeps them in RAM; each is on the compute device only while it runs."""

    def __init__(self) -> None:
        self._models: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

        blip_dir, clip_dir = os.path.join(folder(), "blip"), os.path.join(folder(), "clip")
        return {"blip": BlipForConditionalGeneration.from_pretrained(blip_dir, local_files_only=True).eval(),
                "blip_processor": BlipProcessor.from_pretrained(blip_dir, local_files_only=True),
                "clip": CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval(),
                "clip_processor": CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)}

    def interrogate(self, image) -> str:
        """``caption, term, term, ...`` for a PIL RGB image."""
        import torch

        from modules import devices

        from modules.loading import model_catalog

        missing = missing_files()
        if missing and model_catalog.downloads_enabled():
            try:
                with self._lock:
                    fetch_missing()
            except Exception as e:  # offline, hub unreachable, disk full
                first_line = (str(e).splitlines() or [""])[0][:200]
                raise InterrogatorFilesMissing(
                    f"CLIP interrogator files are missing ({', '.join(missing)}) and could not be downloaded "
                    f"({type(e).__name__}: {first_line}); get {where_to_get()}") from None
            missing = missing_files()
        if missing:
            raise missing_error(missing)
        with self._lock:
            if self._models is None:
                self._models = self._load()
            m = self._models
            device = devices.device
            with torch.inference_mode():
                m["blip"].to(device)
                inputs = m["blip_processor"](images=image, return_tensors="pt").to(device)
                tokens = m["blip"].generate(**inputs, max_new_tokens=CAPTION_MAX_TOKENS, num_beams=1, do_sample=False)
                caption = m["blip_processor"].decode(tokens[0], skip_special_tokens=True).strip()
                m["blip"].to("cpu")
                terms = self._rank_terms(image, device)
            return ", ".join([caption, *terms]) if caption else ", ".join(terms)

    def _rank_terms(self, image, device) -> list[str]:
        m = self._models
        clip, processor = m["clip"].to(device), m["clip_processor"]
        pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(device)
        image_features = _unit(clip.get_image_features(pixel_values=pixels))
        chosen = []
        for path in category_files():
            with open(path, encoding="utf8") as f:
                terms = [line.strip() for line in f if line.strip()]
            if not terms:
                continue
            text = processor.tokenizer(terms, padding=True, truncation=True, return_tensors="pt").to(device)
            text_features = _unit(clip.get_text_features(**text))
            scores = (image_features @ text_features.T)[0]
            for index in scores.topk(min(_terms_per_file(path), len(terms))).indices.tolist():
                chosen.append(terms[index])
        clip.to("cpu")
        return chosen


def _unit(features):
    """Projected CLIP embeddings scaled to length 1 (transformers 5 wraps them in an output object)."""
    import torch

    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(tensor, dim=-1)


clip_interrogator = ClipInterrogator()


class DeepbooruInterrogator:
    """The DeepDanbooru tagger behind the same ``interrogate(image)`` call."""

    def interrogate(self, image) -> str:
        from modules import deepbooru

        return deepbooru.model.tag(image)


def find(model: str) -> ClipInterrogator | DeepbooruInterrogator:
    """The interrogator for an API ``model`` name ("clip" or "deepdanbooru"), with its files checked."""
    name = (model or "clip").strip().lower()
    if name == "clip":
        from modules.loading import model_catalog

        missing = missing_files()
        if missing and not model_catalog.downloads_enabled():  # else the job downloads them
            raise missing_error(missing)
        return clip_interrogator
    if name == "deepdanbooru":
        from modules import deepbooru

        if deepbooru.weights_file() is None:
            raise InterrogatorFilesMissing(f"DeepDanbooru weights are missing: put {deepbooru.WEIGHT_NAMES[0]} in "
                                           f"{deepbooru.folder()}")
        return DeepbooruInterrogator()
    raise UnknownInterrogator(f"Model not found: {model!r}; use \"clip\" or \"deepdanbooru\"")
