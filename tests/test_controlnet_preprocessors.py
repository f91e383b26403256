"""ControlNet preprocessors (issue 21): the OpenCV ones on the astronaut photo, and the neural ones (depth, normal
map, pose, segmentation) through the real loading code on tiny random transformers models saved in their official
folder layouts under models/annotator."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from modules.errors import UserInputError
from tests.conftest import models_subdir


def _gray(image) -> bool:
    array = np.asarray(image)
    return array.ndim == 3 and array.shape[2] == 3 and (array[:, :, 0] == array[:, :, 1]).all() and \
        (array[:, :, 1] == array[:, :, 2]).all()


def test_opencv_preprocessors_on_the_astronaut(astronaut):
    from modules.controlnet import apply, preprocessors

    picture = Image.fromarray(astronaut)  # 512x512
    scribble = preprocessors.run("scribble_xdog", picture, 256, 32)
    array = np.asarray(scribble)
    assert scribble.size == (256, 256) and _gray(scribble) and set(np.unique(array)) == {0, 255}
    assert 0.02 < (array[:, :, 0] == 255).mean() < 0.5  # lines, not a blank or a flood
    fewer = np.asarray(preprocessors.run("scribble_xdog", picture, 256, 64))
    assert (fewer == 255).sum() < (array == 255).sum()  # a higher threshold keeps fewer lines
    assert (np.asarray(preprocessors.run("scribble_xdog", picture, 256, 32)) == array).all()  # deterministic

    lineart = preprocessors.run("lineart_standard", picture, 256)
    assert lineart.size == (256, 256) and _gray(lineart) and np.asarray(lineart).max() == 255
    flat = preprocessors.run("lineart_standard (from white bg & black line)", Image.new("RGB", (64, 64), "white"), 64)
    assert np.asarray(flat).max() == 0  # no lines in a blank picture

    assert preprocessors.run("tile_resample", picture, 512, 2).size == (256, 256)
    assert preprocessors.run("tile_resample", picture, 512, 1).size == (512, 512)
    assert (np.asarray(preprocessors.run("invert", picture, 512)) == 255 - astronaut).all()

    import cv2

    scaled = preprocessors.scale_to_resolution(astronaut, 128)
    blurred = np.asarray(preprocessors.run("blur_gaussian", picture, 128, 3))
    assert (blurred == cv2.GaussianBlur(scaled, (0, 0), 3)).all()
    for name in ("recolor_luminance", "recolor_intensity"):
        gray = preprocessors.run(name, picture, 128, 1.0)
        assert _gray(gray) and gray.size == (128, 128)
        darker = np.asarray(preprocessors.run(name, picture, 128, 2.0)).astype(int)
        assert (darker <= np.asarray(gray).astype(int) + 1).all() and darker.mean() < np.asarray(gray).mean()
    value = np.asarray(preprocessors.run("recolor_intensity", picture, 128, 1.0))[:, :, 0]
    assert (value == scaled.max(axis=2)).all()  # V of HSV
    binary = np.asarray(preprocessors.run("threshold", picture, 128, 100))
    assert set(np.unique(binary)) == {0, 255} and _gray(binary)
    assert ((binary[:, :, 0] == 255) == (scaled.min(axis=2) > 100)).all()
    shuffled = np.asarray(preprocessors.run("shuffle", picture, 128))
    assert shuffled.shape == (128, 128, 3) and (shuffled != scaled).mean() > 0.5 and shuffled.std() > 10
    assert (np.asarray(preprocessors.run("shuffle", picture, 128)) == shuffled).all()  # reproducible

    mask = Image.new("L", (512, 512))
    mask.paste(255, (0, 0, 256, 512))  # the left half is masked
    hint = preprocessors.run("inpaint_only", picture, 512, mask=mask)
    assert hint.mode == "RGBA" and hint.size == (512, 512)
    values = apply.hint_tensor(hint, 64, 64, "cpu", torch.float32)[0]
    assert (values[:, :, :31] == -1).all() and (values[:, :, 33:] >= 0).all()  # the inpaint ControlNet's input rule
    assert torch.allclose(values[:, :, 40:], apply.hint_tensor(picture, 64, 64, "cpu", torch.float32)[0][:, :, 40:])


def write_annotators(root: str) -> None:
    """Tiny random models for every annotator, as ``save_pretrained`` writes them, in models/annotator/..."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig,
                              DPTForDepthEstimation, DPTImageProcessorPil, RTDetrConfig, RTDetrForObjectDetection,
                              RTDetrImageProcessorPil, RTDetrResNetConfig, SegformerConfig,
                              SegformerForSemanticSegmentation, SegformerImageProcessorPil, VitPoseBackboneConfig,
                              VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessorPil)

    from modules.controlnet import annotators

    torch.manual_seed(0)
    built = {
        "depth_midas": (DPTForDepthEstimation(DPTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
            patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16,
            reassemble_factors=[4, 2, 1, 0.5])), DPTImageProcessorPil(size={"height": 32, "width": 32})),
        "depth_anything_v2": (DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=32, image_size=28, patch_size=14,
                                         out_features=["stage1", "stage2", "stage3", "stage4"],
                                         reshape_hidden_states=False),
            neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, head_hidden_size=8, reassemble_hidden_size=16,
            patch_size=14)), DPTImageProcessorPil(size={"height": 28, "width": 28}, ensure_multiple_of=14)),
        "segformer_ade20k": (SegformerForSemanticSegmentation(SegformerConfig(
            num_labels=150, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
            decoder_hidden_size=16)), SegformerImageProcessorPil(size={"height": 32, "width": 32})),
        "person_detector": (RTDetrForObjectDetection(RTDetrConfig(
            backbone_config=RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                               out_features=["stage2", "stage3", "stage4"]),
            d_model=16, encoder_hidden_dim=16, encoder_in_channels=[16, 24, 32], encoder_ffn_dim=32,
            encoder_attention_heads=2, decoder_ffn_dim=32, decoder_attention_heads=2, decoder_layers=1,
            encoder_layers=1, num_queries=10, id2label={0: "person", 1: "cat"}, label2id={"person": 0, "cat": 1},
            decoder_in_channels=[16, 16, 16], decoder_n_points=2, use_pretrained_backbone=False)), RTDetrImageProcessorPil(size={"height": 64, "width": 64})),
        "vitpose": (VitPoseForPoseEstimation(VitPoseConfig(backbone_config=VitPoseBackboneConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=[64, 48],
            patch_size=[16, 16], out_indices=[2]), num_labels=17)), VitPoseImageProcessorPil(size={"height": 64, "width": 48})),
    }
    for key, (model, processor) in built.items():
        folder = annotators.MODELS[key].path()
        assert folder.startswith(root + os.sep)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def annotator_models(data_dir):
    with models_subdir("annotator") as folder:
        write_annotators(folder)
        yield folder


def test_depth_and_normal_maps_in_the_format_the_controlnets_take(annotator_models, astronaut):
    from modules.controlnet import annotators, preprocessors

    picture = Image.fromarray(astronaut).resize((96, 64))
    for name in ("depth_midas", "depth_anything_v2", "depth"):
        depth = preprocessors.run(name, picture, 64)
        assert depth.size == (96, 64) and _gray(depth), name  # the short side at the preprocessor resolution
        assert np.asarray(depth).min() == 0 and np.asarray(depth).max() == 255, name  # near = white, min-max
    raw = annotators.raw_depth(np.asarray(picture))
    expected = ((raw - raw.min()) / (raw.max() - raw.min()) * 255).clip(0, 255).astype(np.uint8)
    assert (np.asarray(preprocessors.run("depth_midas", picture, 64))[:, :, 0] == expected).all()

    flat = np.asarray(preprocessors.run("normal_midas", picture, 64, 1.0))  # everything is background: z only
    assert flat.shape == (64, 96, 3) and (flat == (127, 127, 255)).all()
    ramp = np.tile(np.arange(96, dtype=np.float32) * 10, (64, 1))  # depth rising to the right: normals tilt in x
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(annotators, "raw_depth", lambda image, key="depth_midas": ramp)
        normal = np.asarray(preprocessors.run("normal_midas", picture, 64, 0.0))
    vector = np.array([10 * 8, 0, 2 * np.pi])  # a 3x3 Sobel of slope 10 is 80; z is 2 pi
    expected = (vector / np.linalg.norm(vector) * 127.5 + 127.5).astype(np.uint8)
    assert (normal[1:-1, 1:-1] == expected).all()


def test_segmentation_paints_the_ade20k_palette(annotator_models, astronaut):
    from modules.controlnet import annotators, preprocessors

    palette = annotators.ADE20K_PALETTE
    assert palette.shape == (150, 3) and tuple(palette[0]) == (120, 120, 120) and tuple(palette[-1]) == (92, 0, 255)
    assert tuple(palette[12]) == (150, 5, 61)  # person
    seg = np.asarray(preprocessors.run("seg_ofade20k", Image.fromarray(astronaut), 64))
    assert seg.shape == (64, 64, 3)
    palette = {tuple(colour) for colour in annotators.ADE20K_PALETTE}
    assert {tuple(colour) for colour in seg.reshape(-1, 3)} <= palette


def test_pose_draws_openpose_skeletons_of_the_people_found(annotator_models, astronaut, monkeypatch):
    from modules.controlnet import annotators, preprocessors

    skeleton = np.zeros((18, 3), dtype=np.float32)
    skeleton[:, 2] = 1
    skeleton[:, 0] = np.linspace(10, 90, 18)
    skeleton[:, 1] = 50
    skeleton[0] = (20, 20, 1)  # nose
    skeleton[1] = (20, 60, 1)  # neck
    drawn = annotators.draw_openpose([skeleton], 100, 100)
    assert tuple(drawn[20, 20]) == (255, 0, 0) and tuple(drawn[60, 20]) == (255, 85, 0)  # the points' colours
    assert tuple(drawn[40, 20]) == tuple(int(c * 0.6) for c in annotators.OPENPOSE_COLOURS[12])  # neck-nose limb
    assert drawn[5:15, 50:60].max() == 0  # black elsewhere

    picture = Image.fromarray(astronaut).resize((64, 64))
    monkeypatch.setattr(annotators, "PERSON_THRESHOLD", 1.01)  # nobody found: a black picture
    assert np.asarray(preprocessors.run("openpose", picture, 64)).max() == 0
    monkeypatch.setattr(annotators, "PERSON_THRESHOLD", 0.0)  # random weights: take every box as a person
    monkeypatch.setattr(annotators, "KEYPOINT_THRESHOLD", 0.0)
    people = annotators.openpose_points(np.asarray(picture))
    assert people and all(person.shape == (18, 3) for person in people)
    assert np.allclose(people[0][1, :2], (people[0][2, :2] + people[0][5, :2]) / 2)  # the neck: between the shoulders
    pose = np.asarray(preprocessors.run("openpose", picture, 64))
    assert pose.shape == (64, 64, 3) and pose.max() > 0


def test_a_missing_annotator_names_its_folder_and_hub_repository(data_dir, monkeypatch, astronaut):
    import dataclasses

    from modules.controlnet import annotators, preprocessors
    from modules.loading import model_catalog
    from modules.shared import opts

    picture = Image.fromarray(astronaut).resize((64, 64))
    for key in annotators.MODELS:
        monkeypatch.setitem(annotators.MODELS, key, dataclasses.replace(annotators.MODELS[key],
                                                                        folder=f"annotator-missing/{key}"))
    with pytest.raises(UserInputError, match=r"MiDaS \(DPT hybrid\): the model folder .* is missing and HF_HUB_OFFLINE "
                                             r"is set; download the json files and model.safetensors or "
                                             r"pytorch_model.bin of https://huggingface.co/Intel/dpt-hybrid-midas"):
        preprocessors.run("depth_midas", picture, 64)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    from modules.shared import state

    progress = []

    def unreachable(repo, **kwargs):
        progress.append(state.textinfo)
        raise OSError("no route to host")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(UserInputError, match="could not download https://huggingface.co/Intel/dpt-hybrid-midas"):
        preprocessors.run("normal_midas", picture, 64)
    assert progress == ["Downloading MiDaS (DPT hybrid) from https://huggingface.co/Intel/dpt-hybrid-midas"]
    assert state.textinfo is None  # the progress line is cleared afterwards
    opts.set("download_official_weights", False)
    try:
        with pytest.raises(UserInputError, match=r"downloads are off \(Settings: download_official_weights\)"):
            model_catalog.ensure_folder(annotators.MODELS["vitpose"])
    finally:
        opts.set("download_official_weights", True)
    assert not os.path.exists(os.path.dirname(annotators.MODELS["vitpose"].path()))


def test_hed_soft_edges_from_the_official_weights_layout(data_dir, astronaut):
    """``ControlNetHED.pth`` keys (norm, block1-5 convs and projections): with only the projections' biases set, every
    pixel is sigmoid(mean of the five biases); the safe variant quantises to half steps."""
    from modules.arch import hed
    from modules.controlnet import annotators, preprocessors
    from modules.errors import UnsupportedModelFile

    path = annotators.HED_WEIGHTS.path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {key: torch.zeros_like(value) for key, value in hed.HED().state_dict().items()}
    assert len(state) == 2 * (2 + 2 + 3 + 3 + 3) + 2 * 5 + 1 and state["block5.convs.2.weight"].shape == (512, 512, 3, 3)
    for index, bias in enumerate((1.0, 2.0, 3.0, 4.0, 5.0), start=1):
        state[f"block{index}.projection.bias"] = torch.tensor([bias])
    torch.save(state, path)
    try:
        picture = Image.fromarray(astronaut)
        edges = np.asarray(preprocessors.run("softedge_hed", picture, 64))
        assert edges.shape == (64, 64, 3) and (edges == int(255 / (1 + np.exp(-3.0)))).all()  # sigmoid(3): 242
        assert (np.asarray(preprocessors.run("softedge_hedsafe", picture, 64)) == 255).all()  # floor(0.95 x 3) / 2
        assert (np.asarray(preprocessors.run("scribble_hed", picture, 64)) == 255).all()  # flat 242 > 127: all ridge
        torch.manual_seed(0)
        torch.save(hed.HED().state_dict(), path)
        os.utime(path, ns=(1, 1))  # another file: read again
        random = np.asarray(preprocessors.run("hed", picture, 64))
        assert _gray(random) and random.std() > 0
        strokes = np.asarray(preprocessors.run("fake_scribble", picture, 64))
        assert _gray(strokes) and set(np.unique(strokes)) <= {0, 255}
        torch.save({"block1.convs.0.weight": torch.zeros(1)}, path)
        with pytest.raises(UnsupportedModelFile, match="ControlNetHED.pth: .*not the HED network"):
            preprocessors.run("softedge_hed", picture, 64)
    finally:
        os.remove(path)


@pytest.mark.parametrize("kind", ["realistic", "coarse"])
def test_line_art_from_the_official_weights_layout(data_dir, astronaut, kind):
    """``sk_model.pth``/``sk_model2.pth`` keys: with every weight 0 and the last bias b, the generator paints
    sigmoid(b) everywhere; the preprocessor inverts it (white lines on black)."""
    from modules.arch import lineart
    from modules.controlnet import annotators, preprocessors

    path = annotators.LINEART_WEIGHTS[kind].path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {key: torch.zeros_like(value) for key, value in lineart.LineArt().state_dict().items()}
    assert len(state) == 24 and state["model2.2.conv_block.5.weight"].shape == (256, 256, 3, 3)
    state["model4.1.bias"] = torch.tensor([2.0])
    torch.save(state, path)
    try:
        lines = np.asarray(preprocessors.run(f"lineart_{kind}", Image.fromarray(astronaut), 64))
        paper = int(255 / (1 + np.exp(-2.0)))  # sigmoid(2) x 255 = 224
        assert lines.shape == (64, 64, 3) and (lines == 255 - paper).all()
        torch.manual_seed(1)
        torch.save(lineart.LineArt().state_dict(), path)
        os.utime(path, ns=(1, 1))
        random = np.asarray(preprocessors.run(f"lineart_{kind}", Image.fromarray(astronaut), 64))
        assert _gray(random) and random.std() > 0
    finally:
        os.remove(path)


def test_thin_lines_keeps_the_local_maxima_above_the_threshold():
    from modules.controlnet import annotators

    soft = np.zeros((32, 32), dtype=np.float32)
    soft[:, 14:19] = [100, 200, 255, 200, 100]  # a soft vertical line, brightest in column 16
    wide = annotators.thin_lines(soft, 150, 0.5)
    assert set(np.unique(wide)) == {0, 255}
    assert (wide[4:28, 15:18] == 255).all() and (wide[4:28, :15] == 0).all() and (wide[4:28, 18:] == 0).all()
    narrow = annotators.thin_lines(soft, 230, 0.5)
    assert (narrow[4:28, 16] == 255).all() and narrow[4:28].sum() == 255 * 24  # only the brightest column
