"""Where the official upscaler, face-restoration, preview and DeepDanbooru weights live, and their download on
first use (as A1111 does).

The setting ``download_official_weights`` (on by default) lets a feature that needs one of these files download it
the first time (atomically, with progress in the console and the page's progress line); off, or with
``HF_HUB_OFFLINE`` set, only files present in ``models/`` are offered, and a feature that needs a missing one says
which file, where to put it and where to get it (:func:`ensure`, :func:`missing_hint`).
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from modules import paths
from modules.errors import UserInputError

REALESRGAN_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"


@dataclass(frozen=True)
class OfficialWeights:
    name: str  # as A1111 lists it
    folder: str  # under models/
    filename: str
    url: str

    def path(self) -> str:
        return os.path.join(folder_path(self.folder), self.filename)


UPSCALERS = (
    OfficialWeights("ESRGAN_4x", "ESRGAN", "ESRGAN_4x.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth"),
    OfficialWeights("R-ESRGAN 4x+", "RealESRGAN", "RealESRGAN_x4plus.pth", f"{REALESRGAN_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth"),
    OfficialWeights("R-ESRGAN 4x+ Anime6B", "RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth",
                    f"{REALESRGAN_RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth"),
    OfficialWeights("R-ESRGAN 2x+", "RealESRGAN", "RealESRGAN_x2plus.pth", f"{REALESRGAN_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth"),
    OfficialWeights("R-ESRGAN General 4xV3", "RealESRGAN", "realesr-general-x4v3.pth",
                    f"{REALESRGAN_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth"),
    OfficialWeights("R-ESRGAN General WDN 4xV3", "RealESRGAN", "realesr-general-wdn-x4v3.pth",
                    f"{REALESRGAN_RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth"),
    OfficialWeights("R-ESRGAN AnimeVideo", "RealESRGAN", "realesr-animevideov3.pth",
                    f"{REALESRGAN_RELEASES}/v0.2.5.0/realesr-animevideov3.pth"),
)

FACE_RESTORERS = (
    OfficialWeights("CodeFormer", "Codeformer", "codeformer-v0.1.0.pth",
                    "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth"),
    OfficialWeights("GFPGAN", "GFPGAN", "GFPGANv1.4.pth",
                    "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth"),
)

FACE_DETECTORS = (
    OfficialWeights("YuNet", "face_detection", "face_detection_yunet_2023mar.onnx",
                    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"),
)

TAESD_FILES = "https://github.com/madebyollin/taesd/raw/main"
PREVIEW_DECODERS = (  # TAESD's decoders (A1111's "TAESD" live preview), by latent space
    OfficialWeights("TAESD", "VAE-taesd", "taesd_decoder.pth", f"{TAESD_FILES}/taesd_decoder.pth"),
    OfficialWeights("TAESDXL", "VAE-taesd", "taesdxl_decoder.pth", f"{TAESD_FILES}/taesdxl_decoder.pth"),
)

DEEPDANBOORU = OfficialWeights("DeepDanbooru", "torch_deepdanbooru", "model-resnet_custom_v3.pt",
                               "https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/"
                               "model-resnet_custom_v3.pt")

# folder under models/ -> command-line flag that overrides it (A1111 names)
FOLDER_FLAGS = {"ESRGAN": "esrgan_models_path", "RealESRGAN": "realesrgan_models_path",
                "Codeformer": "codeformer_models_path", "GFPGAN": "gfpgan_models_path"}


def folder_path(folder: str) -> str:
    from modules import shared

    override = getattr(shared.cmd_opts, FOLDER_FLAGS.get(folder, ""), None)
    return override or os.path.join(paths.models_path, folder)


def downloads_enabled() -> bool:
    from modules import shared
    from modules.loading import model_download

    return bool(shared.opts.download_official_weights) and not model_download.hub_offline()


def _why_no_download() -> str:
    from modules.loading import model_download

    return "HF_HUB_OFFLINE is set" if model_download.hub_offline() else \
        "downloads are off (Settings: download_official_weights)"


def ensure(weights: OfficialWeights) -> str:
    """The path of ``weights``, downloaded first when missing and downloads are on. Otherwise (or when the download
    fails) a UserInputError that names the file, where to save it and where to get it."""
    path = weights.path()
    if os.path.exists(path):
        return path
    if not downloads_enabled():
        raise UserInputError(f"{weights.name}: weights {path} are missing and {_why_no_download()}; download "
                             f"{weights.url} and save it there")
    try:
        return download(weights)
    except (OSError, urllib.error.URLError) as e:  # offline, unreachable, disk full
        reason = getattr(e, "reason", None) or e.strerror or e
        raise UserInputError(f"{weights.name}: could not download {weights.url} ({reason}); download it yourself "
                             f"and save it as {path}") from None


def missing_hint(catalog: tuple[OfficialWeights, ...]) -> str:
    """One line per official file that is not present: where to put it and where to get it."""
    lines = [f"{w.name}: save {w.url} as {w.path()}" for w in catalog if not os.path.exists(w.path())]
    return "\n".join(lines)


def download(weights: OfficialWeights, report: Callable[[int, int], None] | None = None) -> str:
    """Fetch ``weights`` into its folder (atomically: a partial file never takes the final name)."""
    from tqdm.auto import tqdm

    from modules import shared

    target = weights.path()
    if os.path.exists(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(weights.url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=weights.filename)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
                if total:
                    shared.state.textinfo = f"Downloading {weights.filename}: {100 * done // total}%"
                if report:
                    report(done, total)
            bar.close()
        os.replace(partial, target)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    shared.state.textinfo = None
    return target


@dataclass(frozen=True)
class HubFolder:
    """A transformers model kept as a folder under ``models/`` (config, preprocessor config, weights), fetched from
    the Hugging Face hub on first use (``huggingface_hub.snapshot_download``)."""
    name: str
    folder: str  # under models/
    repo: str
    weights: tuple[str, ...] = ("model.safetensors",)  # any one of them is enough
    subfolder: str = ""  # of the hub repository (kept under the same relative path here)

    def path(self) -> str:
        return os.path.join(folder_path(self.folder), *self.subfolder.split("/")) if self.subfolder else \
            folder_path(self.folder)

    def present(self) -> bool:
        path = self.path()
        return os.path.isfile(os.path.join(path, "config.json")) and any(
            os.path.isfile(os.path.join(path, name)) for name in self.weights)


def ensure_folder(model: HubFolder) -> str:
    """The folder of ``model``, downloaded first when missing and downloads are on; otherwise (or when the download
    fails) a UserInputError naming the folder and the hub repository to get it from."""
    path = model.path()
    if model.present():
        return path
    where = f"https://huggingface.co/{model.repo}" + (f"/tree/main/{model.subfolder}" if model.subfolder else "")
    if not downloads_enabled():
        raise UserInputError(f"{model.name}: the model folder {path} is missing and {_why_no_download()}; download the "
                             f"json files and {' or '.join(model.weights)} of {where} into it")
    from huggingface_hub import snapshot_download

    from modules import shared

    shared.state.textinfo = f"Downloading {model.name} from {where}"  # the page's progress line says what waits
    try:
        prefix = f"{model.subfolder}/" if model.subfolder else ""
        snapshot_download(model.repo, local_dir=folder_path(model.folder),
                          allow_patterns=[prefix + pattern for pattern in ("*.json", *model.weights)])
    except Exception as e:  # offline, hub unreachable, disk full: huggingface_hub raises many kinds
        raise UserInputError(f"{model.name}: could not download {where} ({type(e).__name__}); download its json files "
                             f"and {' or '.join(model.weights)} into {path}") from None
    finally:
        shared.state.textinfo = None
    if not model.present():
        raise UserInputError(f"{model.name}: {where} has none of {', '.join(model.weights)}")
    return path
