"""The neural preprocessors (no ``controlnet_aux``, no torchvision), in the formats the ControlNets were trained on:

- depth, near = white (min-max normalised relative inverse depth), and normal maps from its gradients as the
  extension's ``normal_midas``: transformers' DPT hybrid MiDaS and Depth Anything V2;
- OpenPose body skeletons (18 points, the OpenPose colours, on black) from ViTPose's COCO keypoints, one per person
  RT-DETR finds (both transformers);
- ADE20k segmentation in the palette the seg ControlNets expect: transformers' SegFormer;
- HED soft edges and scribbles, and line art: our torch ports of lllyasviel's networks (``modules.arch.hed``,
  ``modules.arch.lineart``) with their official files.

The transformers models are folders under ``models/annotator/`` fetched from the hub on first use, the official
files are downloaded there on first use (both as the upscalers' weights: setting, offline message).
"""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from modules.loading.model_catalog import HubFolder, OfficialWeights, ensure, ensure_folder

MODELS = {
    "depth_midas": HubFolder("MiDaS (DPT hybrid)", "annotator/dpt-hybrid-midas", "Intel/dpt-hybrid-midas",
                             ("model.safetensors", "pytorch_model.bin")),
    "depth_anything_v2": HubFolder("Depth Anything V2 (small)", "annotator/depth-anything-v2-small",
                                   "depth-anything/Depth-Anything-V2-Small-hf"),
    "person_detector": HubFolder("RT-DETR (person detection)", "annotator/rtdetr-r50vd-coco-o365",
                                 "PekingU/rtdetr_r50vd_coco_o365"),
    "vitpose": HubFolder("ViTPose (base)", "annotator/vitpose-base-simple", "usyd-community/vitpose-base-simple"),
    "segformer_ade20k": HubFolder("SegFormer ADE20k", "annotator/segformer-b4-ade-512",
                                  "nvidia/segformer-b4-finetuned-ade-512-512", ("model.safetensors", "pytorch_model.bin")),
}

ANNOTATOR_FILES = "https://huggingface.co/lllyasviel/Annotators/resolve/main"
HED_WEIGHTS = OfficialWeights("HED (ControlNetHED)", "annotator", "ControlNetHED.pth",
                              f"{ANNOTATOR_FILES}/ControlNetHED.pth")
LINEART_WEIGHTS = {"realistic": OfficialWeights("Line art (realistic)", "annotator", "sk_model.pth",
                                                f"{ANNOTATOR_FILES}/sk_model.pth"),
                   "coarse": OfficialWeights("Line art (coarse)", "annotator", "sk_model2.pth",
                                             f"{ANNOTATOR_FILES}/sk_model2.pth")}

PERSON_THRESHOLD = 0.3  # detections of a person below this score are left out
KEYPOINT_THRESHOLD = 0.3  # keypoints below this score are not drawn

_lock = threading.Lock()
_loaded: dict[str, tuple[Any, Any]] = {}  # folder or file -> (model, image processor or None), kept in RAM
_running = threading.Lock()  # one model on a device at a time: --gpus workers share these models


def load_hub_model(hub: HubFolder, model_class: str, default_processor: str | None = None) -> tuple[Any, Any]:
    """(model, image processor) of a hub folder, fetched first when missing and kept in RAM; float32 whatever the
    config says ("auto" would give some of them float16). ``default_processor``: the transformers class to use
    with its defaults when the folder has no preprocessor config."""
    import torch
    import transformers

    folder = ensure_folder(hub)
    with _lock:
        if folder not in _loaded:
            model = getattr(transformers, model_class).from_pretrained(folder, local_files_only=True,
                                                                       dtype=torch.float32).eval()
            if default_processor and not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
                processor = getattr(transformers, default_processor)()
            else:
                processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            _loaded[folder] = (model, processor)
        return _loaded[folder]


def _load(key: str, model_class: str) -> tuple[Any, Any]:
    return load_hub_model(MODELS[key], model_class)


def run_on_device(model: Any, inputs: dict) -> Any:
    """The model's outputs on the compute device (it stays there only while it runs)."""
    import torch

    from modules import devices

    with _running, torch.inference_mode():
        model.to(devices.device)
        try:
            return model(**{key: value.to(devices.device) if hasattr(value, "to") else value
                            for key, value in inputs.items()})
        finally:
            model.to("cpu")


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image[:, :, :3])


def raw_depth(image: np.ndarray, key: str = "depth_midas", size: tuple[int, int] | None = None) -> np.ndarray:
    """The model's relative inverse depth (larger = nearer), float32 (H, W) at ``size`` or the image's size."""
    import torch

    model, processor = _load(key, "AutoModelForDepthEstimation")
    predicted = run_on_device(model, processor(images=_pil(image), return_tensors="pt")).predicted_depth
    resized = torch.nn.functional.interpolate(predicted[:, None].float().cpu(), size=size or image.shape[:2],
                                              mode="bicubic", align_corners=False)
    return resized[0, 0].numpy()


def normalised(depth: np.ndarray) -> np.ndarray:
    low, high = float(depth.min()), float(depth.max())
    return (depth - low) / (high - low) if high > low else np.zeros_like(depth)


def gray_to_rgb(values: np.ndarray) -> np.ndarray:
    """A 0..1 (H, W) map as (H, W, 3) uint8."""
    return np.repeat((values * 255.0).clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def depth_map(image: np.ndarray, key: str) -> np.ndarray:
    return gray_to_rgb(normalised(raw_depth(image, key)))


def normal_map(image: np.ndarray, background_threshold: float) -> np.ndarray:
    """The extension's ``normal_midas``: x and y from the depth's Sobel gradients (none where the normalised depth
    is below ``background_threshold``), z = 2 pi, normalised to unit length, as 0..255 RGB."""
    import cv2

    depth = raw_depth(image, "depth_midas")
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    background = normalised(depth) < background_threshold
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, np.full_like(x, 2 * np.pi)], axis=2)
    normal /= np.sqrt((normal ** 2).sum(axis=2, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


# ---- edges and lines (our torch ports) ---------------------------------------------------------------------

def _network(weights: OfficialWeights, architecture: Any) -> Any:
    """One of our torch ports (``architecture.load``) with the official weights, downloaded first when missing."""
    from modules.loading import model_files

    path = ensure(weights)
    key = f"{path}@{os.stat(path).st_mtime_ns}"  # a replaced file is read again
    with _lock:
        if key not in _loaded:
            with model_files.loading(path, weights.name):
                _loaded[key] = (architecture.load(model_files.read_state_dict(path), os.path.basename(path)), None)
        return _loaded[key][0]


def soft_edges(image: np.ndarray, safe: bool) -> np.ndarray:
    """HED's soft edges: its five edge maps upsampled to the picture (bilinear), averaged, through a sigmoid. ``safe``
    quantises them to three levels (0, 0.5, 1), as the extension's ``softedge_hedsafe``."""
    import cv2
    import torch

    from modules.arch import hed

    height, width = image.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(image[:, :, :3])).float().permute(2, 0, 1)[None]
    maps = run_on_device(_network(HED_WEIGHTS, hed), {"x": pixels})
    resized = [cv2.resize(edges.float().cpu().numpy()[0, 0], (width, height), interpolation=cv2.INTER_LINEAR)
               for edges in maps]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(resized, axis=2), axis=2).astype(np.float64)))
    if safe:
        edge = np.floor(edge * 3) / 2
    return gray_to_rgb(edge)


def thin_lines(soft: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """The scribble preprocessors' line picking: 255 where the blurred 0..255 map is above ``threshold`` and a local
    maximum along at least one of the four directions (across a line, its crest), 0 elsewhere."""
    import cv2

    blurred = cv2.GaussianBlur(soft.astype(np.float32), (0, 0), sigma)
    ridges = np.zeros_like(blurred)
    for kernel in (np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.uint8), np.array([[0, 1, 0]] * 3, np.uint8),
                   np.eye(3, dtype=np.uint8), np.fliplr(np.eye(3, dtype=np.uint8)).copy()):
        np.putmask(ridges, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    return np.where(ridges > threshold, 255, 0).astype(np.uint8)


def scribble(image: np.ndarray) -> np.ndarray:
    """``scribble_hed``: HED's soft edges thinned, blurred and binarised into white strokes on black."""
    import cv2

    lines = cv2.GaussianBlur(thin_lines(soft_edges(image, False)[:, :, 0], 127, 3.0), (0, 0), 3.0)
    strokes = np.where(lines > 4, 255, 0).astype(np.uint8)
    return np.repeat(strokes[:, :, None], 3, axis=2)


def line_art(image: np.ndarray, kind: str) -> np.ndarray:
    """White lines on black: the inverted output of the "informative drawings" generator (``kind``: realistic or
    coarse weights)."""
    import torch

    from modules.arch import lineart

    pixels = torch.from_numpy(np.ascontiguousarray(image[:, :, :3])).float().permute(2, 0, 1)[None] / 255.0
    paper = run_on_device(_network(LINEART_WEIGHTS[kind], lineart), {"x": pixels})[0, 0].float().cpu().numpy()
    lines = 255 - (paper * 255.0).clip(0, 255).astype(np.uint8)
    return np.repeat(lines[:, :, None], 3, axis=2)


# ---- segmentation -----------------------------------------------------------------------------------------

ADE20K_PALETTE = np.array([
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255)], dtype=np.uint8)  # the 150 ADE20k classes, in their order


def segmentation(image: np.ndarray) -> np.ndarray:
    """Each pixel in the ADE20k palette colour of its class (SegFormer's logits upsampled to the image)."""
    import torch

    model, processor = _load("segformer_ade20k", "AutoModelForSemanticSegmentation")
    logits = run_on_device(model, processor(images=_pil(image), return_tensors="pt")).logits.float().cpu()
    upsampled = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    classes = upsampled[0].argmax(dim=0).numpy()
    return ADE20K_PALETTE[classes % len(ADE20K_PALETTE)]


# ---- pose ---------------------------------------------------------------------------------------------------

# OpenPose's 18 body points: nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle,
# left hip/knee/ankle, right eye, left eye, right ear, left ear; as indices into COCO's 17 (None: the neck, the
# shoulders' midpoint)
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
OPENPOSE_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
                    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255),
                    (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def person_boxes(image: np.ndarray) -> np.ndarray:
    """(N, 4) boxes as x, y, width, height of the people RT-DETR finds."""
    import torch

    model, processor = _load("person_detector", "AutoModelForObjectDetection")
    outputs = run_on_device(model, processor(images=_pil(image), return_tensors="pt"))
    outputs = type(outputs)(**{key: value.float().cpu() if torch.is_tensor(value) else value
                               for key, value in outputs.items()})
    found = processor.post_process_object_detection(outputs, target_sizes=[image.shape[:2]],
                                                    threshold=PERSON_THRESHOLD)[0]
    boxes = found["boxes"][found["labels"] == _person_label(model)].numpy().reshape(-1, 4)
    boxes[:, 2:] -= boxes[:, :2]
    return boxes


def _person_label(model: Any) -> int:
    labels = {str(name).lower(): int(index) for index, name in model.config.id2label.items()}
    return labels.get("person", 0)


def openpose_points(image: np.ndarray) -> list[np.ndarray]:
    """One (18, 3) array of x, y, score per person, in OpenPose's point order."""
    import torch

    boxes = person_boxes(image)
    if not len(boxes):
        return []
    model, processor = _load("vitpose", "VitPoseForPoseEstimation")
    inputs = processor(_pil(image), boxes=[boxes], return_tensors="pt")
    outputs = run_on_device(model, inputs)
    outputs.heatmaps = outputs.heatmaps.float().cpu()
    people = processor.post_process_pose_estimation(outputs, boxes=[boxes])[0]
    result = []
    for person in people:
        coco = np.concatenate([torch.as_tensor(person["keypoints"]).float().numpy(),
                               torch.as_tensor(person["scores"]).float().numpy()[:, None]], axis=1)
        neck = (coco[5] + coco[6]) / 2
        neck[2] = min(coco[5, 2], coco[6, 2])
        result.append(np.stack([neck if index is None else coco[index] for index in OPENPOSE_FROM_COCO]))
    return result


def draw_openpose(points: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """OpenPose's body drawing: limbs as ellipses in 60 % of the first point's colour, points as discs, on black."""
    import cv2

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    stick = max(1, round(4 * max(height, width) / 512))
    for person in points:
        seen = person[:, 2] >= KEYPOINT_THRESHOLD
        for index, (a, b) in enumerate(OPENPOSE_LIMBS):
            if not (seen[a] and seen[b]):
                continue
            (xa, ya), (xb, yb) = person[a, :2], person[b, :2]
            length = float(np.hypot(xa - xb, ya - yb))
            angle = float(np.degrees(np.arctan2(ya - yb, xa - xb)))
            polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), stick),
                                       int(angle), 0, 360, 1)
            overlay = canvas.copy()
            cv2.fillConvexPoly(overlay, polygon, OPENPOSE_COLOURS[index])
            canvas = cv2.addWeighted(canvas, 0.4, overlay, 0.6, 0)
        for index, (x, y, _) in enumerate(person):
            if seen[index]:
                cv2.circle(canvas, (int(x), int(y)), stick, OPENPOSE_COLOURS[index], thickness=-1)
    return canvas


def openpose(image: np.ndarray) -> np.ndarray:
    return draw_openpose(openpose_points(image), *image.shape[:2])
