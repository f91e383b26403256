"""Face restoration (A1111 ``modules.face_restoration``): detect faces, align each to the 512x512 template,
restore it with a face network, paste it back with a feathered mask.

``shared.face_restorers`` lists the restorers whose weights are present (CodeFormer, GFPGAN);
``restore_faces(np_image)`` runs the one chosen in ``opts.face_restoration_model``.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np

from modules.imaging import face_detection
from modules.loading import model_catalog
from modules.errors import UserInputError

FACE_SIZE = 512
# image-left eye, image-right eye, nose tip, mouth left, mouth right on the aligned 512x512 face (FFHQ template)
TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
WEIGHT_EXTENSIONS = (".pth", ".pt", ".safetensors")


class FaceRestoration:
    """Base class: ``restore`` takes and returns an RGB uint8 (H, W, 3) array."""

    def name(self) -> str:
        return "None"

    def restore(self, np_image: np.ndarray) -> np.ndarray:
        return np_image


def alignment(face: face_detection.Face) -> np.ndarray:
    """The 2x3 similarity transform that maps the face's landmarks onto the template."""
    import cv2

    points = face.landmarks.astype(np.float32)
    target = TEMPLATE[:len(points)]
    if len(points) == 2:  # eyes only: the similarity is fully determined by two points
        source = complex(*(points[1] - points[0]))
        scale_rotation = complex(*(target[1] - target[0])) / source
        offset = complex(*target[0]) - scale_rotation * complex(*points[0])
        a, b = scale_rotation.real, scale_rotation.imag
        return np.array([[a, -b, offset.real], [b, a, offset.imag]], dtype=np.float64)
    matrix, _ = cv2.estimateAffinePartial2D(points, target, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate")
    return matrix


def crop_face(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.warpAffine(image, affine, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(132, 133, 135))


def paste_face(image: np.ndarray, restored: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Warp ``restored`` back into ``image``. The blend mask is the face square shrunk by a margin and
    blurred, so the edge is soft and nothing outside the square changes."""
    import cv2

    height, width = image.shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    back = cv2.warpAffine(restored, inverse, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), inverse, (width, height), flags=cv2.INTER_NEAREST)
    side = FACE_SIZE / np.sqrt(abs(np.linalg.det(affine[:, :2])))
    edge = max(int(side / 20), 1)
    mask = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)[..., None]
    return (mask * back.astype(np.float32) + (1 - mask) * image.astype(np.float32)).round().astype(np.uint8)


def face_region(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the pixels ``paste_face`` may change."""
    import cv2

    corners = np.array([[0, 0], [FACE_SIZE, 0], [0, FACE_SIZE], [FACE_SIZE, FACE_SIZE]], np.float32)
    mapped = cv2.transform(corners[None], cv2.invertAffineTransform(affine))[0]
    left, top = np.floor(mapped.min(axis=0)).astype(int)
    right, bottom = np.ceil(mapped.max(axis=0)).astype(int)
    return max(left, 0), max(top, 0), min(right + 1, shape[1]), min(bottom + 1, shape[0])


def restore_each_face(np_image: np.ndarray, restore_face: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Detect, align, restore (``restore_face`` maps a 512x512 RGB face to its restoration) and paste back."""
    result = np_image
    for face in face_detection.detect(np_image):
        try:
            affine = alignment(face)
        except ValueError:
            continue
        result = paste_face(result, restore_face(crop_face(np_image, affine)), affine)
    return result


class NetworkFaceRestoration(FaceRestoration):
    """A restorer backed by one weights file in ``models/<folder>``, loaded on first use and kept."""

    official: model_catalog.OfficialWeights

    def __init__(self, path: str):
        self.path = path
        self.network: Any = None
        self.lock = threading.Lock()  # with --gpus, one worker at a time moves the network to its GPU and runs it

    def name(self) -> str:
        return self.official.name

    def build(self, state: dict) -> Any:
        raise NotImplementedError

    def run(self, network: Any, face: Any) -> Any:
        """The network on a (1, 3, 512, 512) face in -1..1."""
        return network(face)

    def load(self) -> Any:
        """The network on ``devices.device`` (built on first use; moved back after ``unload``)."""
        from modules import devices

        if self.network is None:
            from modules.loading import model_files

            if not os.path.exists(self.path):
                model_catalog.ensure(self.official)
            with model_files.loading(self.path, f"{self.name()} model"):
                self.network = self.build(model_files.read_state_dict(self.path))
        return self.network.to(devices.device)

    def restore_face(self, face: np.ndarray) -> np.ndarray:
        import torch

        from modules import devices

        with self.lock:
            network = self.load()
            tensor = torch.from_numpy(face).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(devices.device)
            with torch.no_grad():
                out = self.run(network, tensor).float().clamp(-1, 1)
        return ((out[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)

    def restore(self, np_image: np.ndarray) -> np.ndarray:
        return restore_each_face(np_image, self.restore_face)

    def unload(self) -> None:
        if self.network is not None:
            self.network.to("cpu")


class CodeFormerRestoration(NetworkFaceRestoration):
    official = model_catalog.FACE_RESTORERS[0]

    def __init__(self, path: str, weight: float | None = None):
        super().__init__(path)
        self.weight = weight

    def build(self, state: dict) -> Any:
        from modules.arch import codeformer as codeformer_arch

        return codeformer_arch.build(state)

    def run(self, network: Any, face: Any) -> Any:
        from modules import shared

        weight = self.weight if self.weight is not None else float(shared.opts.code_former_weight)
        return network(face, w=weight, adain=True)

    def restore_with_weight(self, np_image: np.ndarray, weight: float) -> np.ndarray:
        previous, self.weight = self.weight, weight
        try:
            return self.restore(np_image)
        finally:
            self.weight = previous


class GFPGANRestoration(NetworkFaceRestoration):
    official = model_catalog.FACE_RESTORERS[1]

    def build(self, state: dict) -> Any:
        from modules.arch import gfpgan as gfpgan_arch

        return gfpgan_arch.build(state)


def _weights_file(weights: model_catalog.OfficialWeights, prefer: tuple[str, ...]) -> str | None:
    """The official file when present, else the first file whose name starts with one of ``prefer``."""
    folder = model_catalog.folder_path(weights.folder)
    if os.path.exists(weights.path()):
        return weights.path()
    candidates = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for prefix in prefer:
        for name in candidates:
            if name.lower().startswith(prefix) and name.lower().endswith(WEIGHT_EXTENSIONS):
                return os.path.join(folder, name)
    return None


def face_restorers() -> list[FaceRestoration]:
    """``shared.face_restorers``: CodeFormer and GFPGAN where their weights are present (or downloadable).
    Loaded networks are kept while their file stays the same."""
    from modules import shared

    wanted = []
    for cls, prefer in ((CodeFormerRestoration, ("codeformer",)), (GFPGANRestoration, ("gfpganv1.4", "gfpganv1.3", "gfpgan"))):
        path = _weights_file(cls.official, prefer)
        if path is None and model_catalog.downloads_enabled():
            path = cls.official.path()
        if path is not None:
            wanted.append((cls, path))
    current = [(type(r), getattr(r, "path", None)) for r in shared.face_restorers]
    if current != wanted:
        shared.face_restorers[:] = [cls(path) for cls, path in wanted]
    return shared.face_restorers


def find(name: str) -> FaceRestoration:
    for restorer in face_restorers():
        if restorer.name().lower() == name.lower():
            return restorer
    hint = model_catalog.missing_hint(model_catalog.FACE_RESTORERS)
    raise UserInputError(f"Face restoration model {name!r} is not available." + (f" To add it:\n{hint}" if hint else ""))


def restore_faces(np_image: np.ndarray, model_name: str | None = None) -> np.ndarray:
    """Restore every face in an RGB uint8 array with ``model_name`` (default: the setting)."""
    from modules import shared

    restorer = find(model_name or shared.opts.face_restoration_model)
    result = restorer.restore(np_image)
    if shared.opts.face_restoration_unload and isinstance(restorer, NetworkFaceRestoration):
        restorer.unload()
    return result
