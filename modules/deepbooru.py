"""The DeepDanbooru tagger (A1111 ``modules.deepbooru``): ``model.tag(pil_image)`` returns the image's booru
tags above the score threshold, formatted by the ``deepbooru_*`` settings.

Weights: ``models/torch_deepdanbooru/model-resnet_custom_v3.pt``, the torch conversion A1111 downloads (a
state dict with the tag list under ``tags``), read with ``torch.load(weights_only=True)``; ``.safetensors``
files of the same keys are accepted with the tags in their metadata (``tags``: a JSON list).
"""
from __future__ import annotations

import json
import os
import re
import threading

from modules import paths

WEIGHT_NAMES = ("model-resnet_custom_v3.pt", "model-resnet_custom_v3.safetensors")
INPUT_SIZE = 512
RE_SPECIAL = re.compile(r"([\\()])")


class DeepDanbooruMissing(RuntimeError):
    status_code = 503


def folder() -> str:
    return os.path.join(paths.models_path, "torch_deepdanbooru")


def weights_file() -> str | None:
    for name in WEIGHT_NAMES:
        path = os.path.join(folder(), name)
        if os.path.isfile(path):
            return path
    return None


def _read_state_dict(path: str) -> dict:
    from modules.loading import model_files

    if model_files.detect_format(path) == model_files.SAFETENSORS:
        state = dict(model_files.read_state_dict(path))
        state["tags"] = json.loads((model_files.read_safetensors_header(path).get("__metadata__") or {}).get("tags", "[]"))
        return state
    return model_files.load_pickle(path)


class DeepDanbooru:
    def __init__(self) -> None:
        self.model = None
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.model is not None:
            return
        from modules.arch import deepdanbooru as deepbooru_model

        from modules.errors import UserInputError
        from modules.loading import model_catalog, model_files

        path = weights_file()
        if path is None:
            try:
                path = model_catalog.ensure(model_catalog.DEEPDANBOORU)
            except UserInputError as e:
                raise DeepDanbooruMissing(str(e)) from None

        with model_files.loading(path, "DeepDanbooru model"):
            state = _read_state_dict(path)
            stages, tag_count = deepbooru_model.stages_from_state_dict(state)
            model = deepbooru_model.DeepDanbooruModel(stages, tag_count)
            model.load_state_dict(state)
            if len(model.tags) != tag_count:
                raise ValueError(f"{len(model.tags)} tags for {tag_count} outputs")
        self.model = model.eval()

    def start(self) -> None:
        from modules import devices

        self.load()
        self.model.to(devices.device)

    def stop(self) -> None:
        if self.model is not None:
            self.model.to("cpu")

    def tag(self, pil_image) -> str:
        with self._lock:
            self.start()
            try:
                return self.tag_multi(pil_image)
            finally:
                self.stop()

    def probabilities(self, pil_image) -> dict[str, float]:
        """Every tag's score for an image (resized and padded to 512x512 as in A1111)."""
        import numpy as np
        import torch

        from modules import devices, images

        picture = images.resize_image(2, pil_image.convert("RGB"), INPUT_SIZE, INPUT_SIZE)
        array = np.expand_dims(np.asarray(picture, dtype=np.float32), 0) / 255
        with torch.inference_mode():
            scores = self.model(torch.from_numpy(array).to(devices.device))[0].float().cpu().numpy()
        return dict(zip(self.model.tags, scores.tolist()))

    def tag_multi(self, pil_image, force_disable_ranks: bool = False) -> str:
        """Tags over ``interrogate_deepbooru_score_threshold``, without ``rating:`` tags and the filtered ones,
        alphabetical or by score, with spaces and escaped brackets as the settings ask."""
        from modules.shared import opts

        threshold = float(opts.interrogate_deepbooru_score_threshold)
        filtered = {t.strip() for t in opts.deepbooru_filter_tags.split(",") if t.strip()}
        scores = {tag: p for tag, p in self.probabilities(pil_image).items()
                  if p >= threshold and not tag.startswith("rating:") and tag not in filtered}
        ordered = sorted(scores) if opts.deepbooru_sort_alpha else sorted(scores, key=scores.get, reverse=True)
        result = []
        for tag in ordered:
            text = tag.replace("_", " ") if opts.deepbooru_use_spaces else tag
            if opts.deepbooru_escape:
                text = RE_SPECIAL.sub(r"\\\1", text)
            if opts.interrogate_return_ranks and not force_disable_ranks:
                text = f"({text}:{scores[tag]:.3f})"
            result.append(text)
        return ", ".join(result)


model = DeepDanbooru()
