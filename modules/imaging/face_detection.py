"""Finding faces and their landmarks in an RGB image.

The default detector needs no download: OpenCV's bundled Haar cascades find the face box, then the eyes
inside it. When ``models/face_detection/face_detection_yunet_2023mar.onnx`` (OpenCV's YuNet) is present it is
used instead; it also gives the nose and mouth corners.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from modules.loading import model_catalog


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height
    landmarks: np.ndarray  # (N, 2) float32 in image order: image-left eye, image-right eye[, nose, mouth left, mouth right]
    score: float = 1.0


def detect(image: np.ndarray, min_size: int = 32) -> list[Face]:
    """Faces in an RGB uint8 (H, W, 3) array, largest first."""
    yunet = model_catalog.FACE_DETECTORS[0].path()
    faces = _detect_yunet(image, yunet) if os.path.exists(yunet) else _detect_haar(image, min_size)
    return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)


@functools.lru_cache(maxsize=None)
def _cascade(name: str):
    import cv2

    classifier = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
    if classifier.empty():
        raise RuntimeError(f"OpenCV's {name} is missing from the installed opencv package")
    return classifier


def _detect_haar(image: np.ndarray, min_size: int) -> list[Face]:
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    boxes = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
    eyes_cascade = _cascade("haarcascade_eye.xml")
    faces = []
    for x, y, w, h in (boxes if len(boxes) else []):
        faces.append(Face((int(x), int(y), int(w), int(h)), _eyes(gray, eyes_cascade, x, y, w, h)))
    return faces


def _eyes(gray: np.ndarray, cascade, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Centres of the two eyes found in the upper part of a face box; where the cascade does not find a
    plausible pair, the usual positions of eyes in a Haar face box."""
    upper = gray[y:y + h * 6 // 10, x:x + w]
    found = cascade.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=3, minSize=(max(w // 10, 4),) * 2,
                                     maxSize=(w // 2, w // 2))
    centres = sorted(((ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in (found if len(found) else [])), key=lambda c: c[0])
    left = [c for c in centres if c[0] < w / 2]
    right = [c for c in centres if c[0] >= w / 2]
    if left and right and abs(left[-1][1] - right[0][1]) < h / 8:
        pair = [left[-1], right[0]]
    else:
        pair = [(0.3 * w, 0.38 * h), (0.7 * w, 0.38 * h)]
    return np.array([[x + px, y + py] for px, py in pair], dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _yunet(model_path: str, threshold: float):
    import cv2

    return cv2.FaceDetectorYN.create(model_path, "", (320, 320), threshold)


def _detect_yunet(image: np.ndarray, model_path: str, threshold: float = 0.7) -> list[Face]:
    import cv2

    height, width = image.shape[:2]
    detector = _yunet(model_path, threshold)
    detector.setInputSize((width, height))
    _, rows = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return [face_from_yunet_row(row) for row in (rows if rows is not None else [])]


def face_from_yunet_row(row: np.ndarray) -> Face:
    """YuNet rows are box (4), then the subject's right eye, left eye, nose tip, right and left mouth
    corners (2 each), then the score. The subject's right is the image's left, the order of our template."""
    x, y, w, h = (int(round(v)) for v in row[:4])
    return Face((x, y, w, h), np.asarray(row[4:14], dtype=np.float32).reshape(5, 2), float(row[14]))
