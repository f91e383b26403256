"""The scripts bundled as extensions in extensions-builtin/, run through the Script API on the tiny models."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DenoiserCalls, isolated_script_registry, noise_image, pixels


@pytest.fixture()
def runners(data_dir):
    """The txt2img and img2img runners with the built-in extensions loaded; the registry is reset afterwards."""
    from modules import scripts

    with isolated_script_registry():
        scripts.reload_scripts()
        yield {"txt2img": scripts.scripts_txt2img, "img2img": scripts.scripts_img2img}


def script_module(file_name: str):
    from modules import scripts

    return next(d.module for d in scripts.scripts_data if d.module.__name__ == file_name)


def run_script(runner, p, title: str, args, alwayson=None):
    from modules import processing
    from modules.shared import state

    runner.attach(p, runner.build_args(title, args, alwayson))
    state.begin("test")
    return processing.process_with_scripts(p)


def img2img_job(image, **overrides):
    from modules import processing

    params = dict(prompt="a cat", seed=5, steps=4, width=64, height=64, sampler_name="Euler", denoising_strength=0.5,
                  init_images=[image], do_not_save_samples=True, do_not_save_grid=True)
    params.update(overrides)
    return processing.StableDiffusionProcessingImg2Img(**params)


def test_builtin_scripts_are_listed_on_their_tabs(runners):
    from modules import extensions

    assert {"gobig", "sd-upscale"} <= {e.name for e in extensions.active() if e.is_builtin}
    assert "SD upscale" in runners["img2img"].titles and "SD upscale" not in runners["txt2img"].titles
    assert "GOBIG" in runners["img2img"].titles and "GOBIG" in runners["txt2img"].titles


def test_sd_upscale_renders_every_tile_and_joins_them(runners, tiny_model):
    p = img2img_job(noise_image(64, 64))
    with DenoiserCalls() as calls:
        processed = run_script(runners["img2img"], p, "sd upscale", ["", 32, "Lanczos", 2.0])
    assert [image.size for image in processed.images] == [(128, 128)]
    # 128 px with 64 px tiles overlapping by 32: 3 x 3 tiles, each rendered with int(0.5 x 4) = 2 steps
    assert len(calls.calls) == 9 * 2
    assert "SD upscale overlap: 32, SD upscale upscaler: Lanczos" in processed.info
    assert p.batch_size == 1 and p.n_iter == 1
    by_index = run_script(runners["img2img"], img2img_job(noise_image(64, 64)), "SD upscale", ["", 0, 1, 1.5])
    assert by_index.images[0].size == (96, 96) and "SD upscale upscaler: Lanczos" in by_index.info


def test_sd_upscale_rejects_an_overlap_as_large_as_the_tile(runners, tiny_model):
    from modules.scripts import ScriptError

    with pytest.raises(ScriptError, match="tile overlap must be between 0 and the tile size"):
        run_script(runners["img2img"], img2img_job(noise_image(64, 64)), "SD upscale", ["", 64, "Lanczos", 2.0])
    with pytest.raises(ScriptError, match="unknown upscaler 'Bicubic'"):
        run_script(runners["img2img"], img2img_job(noise_image(64, 64)), "SD upscale", ["", 16, "Bicubic", 2.0])


def test_gobig_layout_runs_from_the_outside_in_with_the_centre_last(runners):
    gobig = script_module("gobig.py")
    boxes = gobig.tile_layout(2048, 2048, 512, 512, 128)
    # steps of 512 - 128 = 384 from the centred tile at 768: rings at 384/1152, then 0/1536 (clamped)
    assert len(boxes) == 25 and boxes[-1] == (768, 768, 1280, 1280)
    ring2 = {(x, y) for x, y, _, _ in boxes[:16]}
    assert all(x in (0, 1536) or y in (0, 1536) for x, y in ring2)
    assert {(x, y) for x, y, _, _ in boxes[16:24]} == {(x, y) for x in (384, 768, 1152) for y in (384, 768, 1152)} - {(768, 768)}
    covered = np.zeros((2048, 2048), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert gobig.tile_layout(1024, 1024, 512, 512, 128)[-1] == (256, 256, 768, 768)


def test_gobig_feathering_leaves_no_seam(runners):
    gobig = script_module("gobig.py")
    canvas = Image.new("RGB", (128, 128), (0, 0, 0))
    boxes = gobig.tile_layout(128, 128, 64, 64, 32)
    tiles = [(box, Image.new("RGB", (64, 64), (30 * i, 200 - 20 * i, 100))) for i, box in enumerate(boxes)]
    result = pixels(gobig.paste_tiles(canvas, tiles, 32))
    # every band between tiles ramps over the overlap: a pixel differs from its neighbour by at most one ramp step
    # (255/32 per 255 of contrast) of each of the two layers that meet there; pasted hard, tiles differ by >= 30
    largest_contrast = 30 * (len(boxes) - 1)
    step = max(abs(np.diff(result, axis=0)).max(), abs(np.diff(result, axis=1)).max())
    assert step <= 2 * np.ceil(largest_contrast * 8 / 255) < 30
    # the centre tile is pasted last: at its middle (alpha 248 of 255, as its bands meet there) it is on top
    assert abs(result[63:65, 63:65] - (30 * 8, 200 - 160, 100)).max() <= 8
    corner = next(tile for box, tile in tiles if box[:2] == (0, 0))
    assert (result[0, 0] == corner.getpixel((0, 0))).all()  # edges on the canvas border are not feathered
    mask = np.asarray(gobig.feather_mask((256, 0, 768, 512), 1024, 1024, 128))
    assert mask[200, 0] == 0 and mask[200, 10] == 40 and mask[200, 63] == 252 and mask[200, 64] == 255  # 4 per pixel
    assert mask[0, 200] == 255 and mask[511, 200] == 0  # top edge on the border: opaque; bottom edge inside: feathered


def test_gobig_on_a_txt2img_result_doubles_it_through_nine_tiles(runners, tiny_model):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=9, steps=4, width=64, height=64,
                                                    sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
    with DenoiserCalls() as calls:
        processed = run_script(runners["txt2img"], p, "gobig", ["Lanczos", 0.5, 32, 1, 0])
    assert [image.size for image in processed.images] == [(128, 128)]
    assert len(calls.calls) == 4 + 9 * 2  # the txt2img image, then 9 tiles of int(0.5 x 4) steps
    assert "GOBIG upscaler: Lanczos, GOBIG overlap: 32, GOBIG tiles: 9, GOBIG passes: 1" in processed.infotexts[0]
    assert "Denoising strength: 0.5" in processed.info


def test_gobig_details_an_img2img_input_twice(runners, tiny_model):
    source = noise_image(64, 64)
    with DenoiserCalls() as calls:
        processed = run_script(runners["img2img"], img2img_job(source), "GOBIG", {"Passes": 2, "Tile overlap": 32,
                                                                                 "Detail strength (denoising)": 0.5})
    assert processed.images[0].size == (256, 256)
    # pass 1: 128 px canvas, 9 tiles; pass 2: 256 px canvas, steps of 32 from the centre -> 7 x 7 tiles
    assert len(calls.calls) == (9 + 49) * 2
    assert "GOBIG passes: 2" in processed.info


def test_loopback_feeds_each_result_back_with_the_strength_curve(runners, tiny_model):
    p = img2img_job(noise_image(64, 64), denoising_strength=0.6)
    with DenoiserCalls() as calls:
        processed = run_script(runners["img2img"], p, "Loopback", [3, 0.2, "Linear", "None"])
    # strengths 0.6, 0.4, 0.2 of 4 steps: int(s x 4) = 2, 1, 0 model calls
    assert len(calls.calls) == 2 + 1 + 0
    assert len(processed.images) == 4 and processed.index_of_first_image == 1  # grid, then one image per loop
    assert [t.split("Loopback: ")[1].split(",")[0] for t in processed.infotexts[1:]] == ["1/3", "2/3", "3/3"]
    assert [t.split("Denoising strength: ")[1].split(",")[0] for t in processed.infotexts[1:]] == ["0.6", "0.4", "0.2"]
    assert p.denoising_strength == 0.6


def test_prompts_from_file_runs_one_job_per_line_with_options(runners, tiny_model):
    from modules import processing
    from modules.scripts import ScriptError

    p = processing.StableDiffusionProcessingTxt2Img(prompt="", seed=11, steps=2, width=64, height=64, sampler_name="Euler",
                                                    do_not_save_samples=True, do_not_save_grid=True)
    text = 'a red cube\n--prompt "a blue ball" --steps 3 --seed 77 --sampler_name k_euler_a --width 72\n\n'
    with DenoiserCalls() as calls:
        processed = run_script(runners["txt2img"], p, "prompts from file or textbox", [False, False, "start", text])
    assert len(calls.calls) == 2 + 3
    assert [image.size for image in processed.images] == [(64, 64), (72, 64)]
    assert processed.infotexts[0].startswith("a red cube\n") and "Seed: 11," in processed.infotexts[0]
    assert processed.infotexts[1].startswith("a blue ball\n")
    assert "Steps: 3, Sampler: Euler a" in processed.infotexts[1] and "Seed: 77," in processed.infotexts[1]
    for bad, message in (("--stepz 3", "unknown option --stepz"), ("--steps many", "--steps: invalid literal"),
                         ("--sampler_name nope", "unknown sampler 'nope'"), ("", "list of prompt inputs is empty")):
        with pytest.raises(ScriptError, match=message):
            run_script(runners["txt2img"], p, "Prompts from file or textbox", [False, False, "start", bad])


def test_prompt_matrix_renders_every_combination_under_labels(runners, tiny_model):
    from modules import processing
    from modules.scripts import ScriptError

    def job(prompt="a cat|red hat|in space"):
        return processing.StableDiffusionProcessingTxt2Img(prompt=prompt, seed=21, steps=2, width=64, height=64,
                                                           sampler_name="Euler", do_not_save_samples=True,
                                                           do_not_save_grid=True)

    processed = run_script(runners["txt2img"], job(), "prompt matrix", [False, False, "positive", "comma", 0])
    grid, cells = processed.images[0], processed.images[1:]
    assert processed.index_of_first_image == 1 and len(cells) == 4
    assert [t.split("\n")[0] for t in processed.infotexts[1:]] == [
        "a cat", "a cat, red hat", "a cat, in space", "a cat, red hat, in space"]
    assert all("Seed: 21," in t for t in processed.infotexts[1:])  # the same seed unless asked otherwise
    # 2 x 2 cells, the row labels take 3/4 of a cell on the left and the column labels a band on top
    pad_left, pad_top = grid.width - 128, grid.height - 128
    assert pad_left == 48 and 10 < pad_top < 64
    assert np.array_equal(pixels(grid.crop((pad_left + 64, pad_top + 64, pad_left + 128, pad_top + 128))), pixels(cells[3]))
    top_band = pixels(grid.crop((pad_left, 0, grid.width, pad_top)))
    left_label, right_label = top_band[:, :64], top_band[:, 64:]
    # column 0 leaves "red hat" out (grey #999999, struck through), column 1 includes it (black)
    assert (left_label == 153).all(axis=2).sum() > 20 and left_label.min() >= 153
    assert (right_label < 60).all(axis=2).sum() > 5

    seeds = run_script(runners["txt2img"], job(), "Prompt matrix", [True, True, "positive", "space", 0])
    assert [t.split("\n")[0] for t in seeds.infotexts[1:3]] == ["a cat", "red hat a cat"]
    assert [int(t.split("Seed: ")[1].split(",")[0]) for t in seeds.infotexts[1:]] == [21, 22, 23, 24]
    with pytest.raises(ScriptError, match="no '\\|' separated parts"):
        run_script(runners["txt2img"], job("a cat"), "Prompt matrix", [False, False, "positive", "comma", 0])


def xyz_args(x=("Nothing", ""), y=("Nothing", ""), z=("Nothing", ""), legend=True, lone=False, sub_grids=False,
             keep_random=False, vary=(False, False, False), margin=0, csv_mode=True):
    """X/Y/Z plot arguments in A1111's order; each axis is (type, values text[, values dropdown])."""
    axes = [(*axis, []) if len(axis) == 2 else axis for axis in (x, y, z)]
    return [*axes[0], *axes[1], *axes[2], legend, lone, sub_grids, keep_random, *vary, margin, csv_mode]


def txt2img_job(**overrides):
    from modules import processing

    params = dict(prompt="a cat", seed=3, steps=2, width=64, height=64, sampler_name="Euler", do_not_save_samples=True,
                  do_not_save_grid=True)
    params.update(overrides)
    return processing.StableDiffusionProcessingTxt2Img(**params)


def test_xyz_value_syntax(runners):
    xyz = script_module("xyz_grid.py")
    assert xyz.expand_numbers(["1-5"], int) == [1, 2, 3, 4, 5]
    assert xyz.expand_numbers(["1-9 (+3)", "20"], int) == [1, 4, 7, 20]
    assert xyz.expand_numbers(["10-1 (-4)"], int) == [10, 6, 2]
    assert xyz.expand_numbers(["1-2 [3]"], float) == [1.0, 1.5, 2.0]
    assert xyz.expand_numbers(["0.5-1.5 (+0.25)"], float) == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert xyz.split_values('a, "b, c" ,d') == ["a", "b, c", "d"]
    for bad, message in ((["1-5 (-1)"], "goes away"), (["many"], "not a number"), (["1-100000"], "at most 500")):
        with pytest.raises(Exception, match=message):
            xyz.expand_numbers(bad, int)
    cost = xyz.AxisOption("Checkpoint name", str, xyz.do_nothing, cost=1.0)
    seed = xyz.AxisOption("Seed", int, xyz.do_nothing)
    order = xyz.job_order([(seed, [1, 2]), (cost, ["a", "b", "a"]), (xyz.axis_options[0], [0])])
    assert order == [(0, 0, 0), (1, 0, 0), (0, 2, 0), (1, 2, 0), (0, 1, 0), (1, 1, 0)]


def test_xyz_plot_renders_a_labelled_grid_of_every_cell(runners, tiny_model):
    from modules import infotext_utils

    with DenoiserCalls() as calls:
        processed = run_script(runners["txt2img"], txt2img_job(), "x/y/z plot",
                               xyz_args(x=("Steps", "1-2"), y=("CFG Scale", "3, 7.5"), lone=True))
    assert len(calls.calls) == (1 + 2) * 2
    grid, cells = processed.images[0], processed.images[1:]
    assert processed.index_of_first_image == 1 and len(cells) == 4
    assert [(t.split("Steps: ")[1].split(",")[0], t.split("CFG scale: ")[1].split(",")[0]) for t in processed.infotexts[1:]] == [
        ("1", "3"), ("2", "3"), ("1", "7.5"), ("2", "7.5")]
    pad_left, pad_top = grid.width - 128, grid.height - 128
    assert pad_left == 48 and pad_top > 0  # row labels on the left, column labels on top
    assert np.array_equal(pixels(grid.crop((pad_left + 64, pad_top, pad_left + 128, pad_top + 64))), pixels(cells[1]))
    assert (pixels(grid.crop((pad_left, 0, grid.width, pad_top))) < 60).all(axis=2).sum() > 5  # text drawn
    params = infotext_utils.parse_generation_parameters(processed.infotexts[0])
    assert params["Script"] == "X/Y/Z plot" and params["X Type"] == "Steps" and params["X Values"] == "1-2"
    assert params["Y Type"] == "CFG Scale" and params["Y Values"] == "3, 7.5" and "Z Type" not in params

    plain = run_script(runners["txt2img"], txt2img_job(), "X/Y/Z plot", xyz_args(x=("Steps", "1-2"), legend=False))
    assert [image.size for image in plain.images] == [(128, 64)]


def test_xyz_plot_loads_each_checkpoint_once(runners, tiny_model):
    from modules import script_callbacks, sd_models

    loaded = []
    script_callbacks.on_model_loaded(lambda model: loaded.append(model.sd_checkpoint_info.model_name))
    processed = run_script(runners["txt2img"], txt2img_job(), "X/Y/Z plot",
                           xyz_args(x=("Checkpoint name", "tiny.safetensors, other, tiny.safetensors"),
                                    y=("Seed", "1, 2"), lone=True))
    assert loaded == ["sub_other"]  # grouped by checkpoint: tiny's four cells, then other's two
    cells = [pixels(image) for image in processed.images[1:]]
    assert np.array_equal(cells[0], cells[2]) and not np.array_equal(cells[0], cells[1])
    assert [t.split("Model: ")[1].split(",")[0] for t in processed.infotexts[1:4]] == ["tiny", "sub_other", "tiny"]
    assert sd_models.select_checkpoint().model_name == "tiny"  # the setting is restored after the plot


def test_xyz_plot_across_families_and_refiner_axes(runners, tiny_model, sdxl_dir, use_checkpoint_dir):
    """Checkpoint name mixes SD 1.x and SDXL in one plot; Refiner checkpoint / Refiner switch at are A1111's axes."""
    use_checkpoint_dir(sdxl_dir, "tiny.safetensors")
    families = run_script(runners["txt2img"], txt2img_job(), "X/Y/Z plot",
                          xyz_args(x=("Checkpoint name", "tiny.safetensors, tiny-sdxl"), lone=True))
    assert [t.split("Model: ")[1].split(",")[0] for t in families.infotexts[1:]] == ["tiny", "tiny-sdxl"]
    assert [image.size for image in families.images[1:]] == [(64, 64)] * 2
    refined = run_script(runners["txt2img"], txt2img_job(steps=4), "X/Y/Z plot",
                         xyz_args(x=("Refiner checkpoint", "None, other"), y=("Refiner switch at", "0.5, 1"),
                                  lone=True))
    texts = refined.infotexts[1:]
    assert ["Refiner: other [" in t for t in texts] == [False, True, False, False]  # switch at 1 never switches
    assert "Refiner switch at: 0.5" in texts[1]
    with pytest.raises(Exception, match="Refiner checkpoint: unknown checkpoint 'missing'"):
        run_script(runners["txt2img"], txt2img_job(), "X/Y/Z plot", xyz_args(x=("Refiner checkpoint", "missing")))


def test_xyz_plot_prompt_sr_sampler_schedule_hires_and_z(runners, tiny_model):
    from modules.scripts import ScriptError

    processed = run_script(runners["txt2img"], txt2img_job(prompt="a cat, masterpiece"), "X/Y/Z plot",
                           xyz_args(x=("Prompt S/R", "cat, dog"), y=("Sampler", "", ["Euler", "DPM++ 2M"]),
                                    z=("Schedule type", "Automatic, Exponential"), lone=True, sub_grids=True,
                                    csv_mode=False))
    grids, lone = processed.images[:3], processed.images[3:]
    assert processed.index_of_first_image == 3 and len(lone) == 8
    assert grids[0].width > 2 * grids[1].width - 1 and grids[1].size == grids[2].size
    prompts = [t.split("\n")[0] for t in processed.infotexts[3:]]
    assert prompts == ["a cat, masterpiece", "a dog, masterpiece"] * 4
    assert ["Sampler: DPM++ 2M," in t for t in processed.infotexts[3:7]] == [False, False, True, True]
    assert ["Schedule type: Exponential" in t for t in processed.infotexts[3:]] == [False] * 4 + [True] * 4

    hires = run_script(runners["txt2img"], txt2img_job(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent"), "X/Y/Z plot",
                       xyz_args(x=("Hires steps", "1, 2"), y=("Denoising", "0.5"), lone=True))
    assert [image.size for image in hires.images[1:]] == [(96, 96)] * 2
    assert ["Hires steps: 1" in hires.infotexts[1], "Hires steps: 2" in hires.infotexts[2]] == [True, True]

    for args, message in ((xyz_args(x=("Sampler", "Euler, Nope")), "unknown sampler 'Nope'"),
                          (xyz_args(x=("Prompt S/R", "horse, dog")), "did not find 'horse'"),
                          (xyz_args(x=("Warp factor", "9")), "unknown axis type 'Warp factor'"),
                          (xyz_args(x=("Checkpoint name", "missing")), "unknown checkpoint 'missing'"),
                          (xyz_args(x=("Steps", "")), "Steps: no values given")):
        with pytest.raises(ScriptError, match=message):
            run_script(runners["txt2img"], txt2img_job(), "X/Y/Z plot", args)


def test_xyz_plot_on_img2img_takes_axes_by_index(runners, tiny_model):
    xyz = script_module("xyz_grid.py")
    labels = [opt.label for opt in xyz.Script().current_axis_options(True)]
    assert "Hires steps" not in labels and "Initial noise multiplier" in labels
    processed = run_script(runners["img2img"], img2img_job(noise_image(64, 64), steps=4), "X/Y/Z plot",
                           xyz_args(x=(labels.index("Denoising"), "0.25, 0.5"), y=("Seed", "-1"), lone=True))
    assert len(processed.images) == 3
    seeds = {t.split("Seed: ")[1].split(",")[0] for t in processed.infotexts[1:]}
    assert len(seeds) == 1 and "-1" not in seeds  # -1 fixed once for the whole plot
    assert "Fixed Y Values: " + seeds.pop() in processed.infotexts[0]


def test_outpainting_border_sizes_and_matched_noise(runners):
    outpainting = script_module("outpainting.py")
    assert outpainting.border_sizes(100, 64, 128, outpainting.DIRECTIONS) == (142, 142, 128, 128)  # 384 x 320
    assert outpainting.border_sizes(100, 64, 128, ["left"]) == (156, 0, 0, 0)  # 256 wide, height kept
    with pytest.raises(Exception, match="directions must be some of"):
        outpainting.border_sizes(64, 64, 64, ["sideways"])

    rng = np.random.default_rng(1)
    image = np.zeros((64, 96, 3))
    image[:, :48] = rng.random((64, 48, 3)) * [0.2, 0.6, 0.3] + [0.5, 0.1, 0.2]  # reddish texture on the left
    mask = np.zeros((64, 96))
    mask[:, 48:] = 1
    filled = outpainting.matched_noise(image, mask, falloff=1.0, colour_variation=0.05)
    assert np.array_equal(filled[:, :48], image[:, :48])  # known pixels untouched
    fill, known = filled[:, 48:].reshape(-1, 3), image[:, :48].reshape(-1, 3)
    assert np.allclose(fill.mean(axis=0), known.mean(axis=0), atol=0.01)  # the known pixels' colours
    assert np.allclose(np.percentile(fill, [10, 50, 90], axis=0), np.percentile(known, [10, 50, 90], axis=0), atol=0.02)
    assert fill.std(axis=0).min() > 0.03  # noise, not a flat colour
    assert np.array_equal(filled, outpainting.matched_noise(image, mask))  # deterministic


def test_poor_mans_outpainting_grows_the_image_tile_by_tile(runners, tiny_model):
    source = noise_image(64, 64, seed=3)
    with DenoiserCalls() as calls:
        processed = run_script(runners["img2img"], img2img_job(source, steps=4, denoising_strength=0.75),
                               "Poor man's outpainting", [32, 2, "fill", ["left", "right", "up", "down"]])
    result = processed.images[0]
    assert result.size == (128, 128)
    # 3 x 3 tiles of 64 px overlapping by 32; the centre one lies inside the picture and is skipped
    assert len(calls.calls) == 8 * 3
    # away from the blurred mask edge the picture is exactly the input, at its new place
    assert np.array_equal(pixels(result)[50:78, 50:78], pixels(source)[18:46, 18:46])
    assert pixels(result)[:16].mean() > 5  # the new border is painted, not left black
    assert "Masked content: fill" in processed.info and "Mask blur: 4" in processed.info


def test_outpainting_mk2_expands_one_side_at_a_time(runners, tiny_model):
    from modules.scripts import ScriptError

    source = noise_image(64, 64, seed=4)
    with DenoiserCalls() as calls:
        processed = run_script(runners["img2img"], img2img_job(source, steps=4, denoising_strength=0.5),
                               "Outpainting mk2", ["", 64, 2, ["left", "down"], 1.0, 0.05])
    assert [image.size for image in processed.images] == [(128, 128)]
    assert len(calls.calls) == 2 * 2  # one img2img per side, int(4 x 0.5) steps each
    assert np.array_equal(pixels(processed.images[0])[0:36, 96:128], pixels(source)[0:36, 32:64])
    assert "Masked content: original" in processed.info and "Mask blur: 8," in processed.info
    with pytest.raises(ScriptError, match="pixels to expand must be between 8 and 256"):
        run_script(runners["img2img"], img2img_job(source), "Outpainting mk2", ["", 0, 2, ["left"], 1.0, 0.05])


def test_pasting_an_xyz_infotext_selects_the_script_and_fills_its_axes(runners, tiny_model):
    import gradio as gr

    from modules import processing
    from webui import ui_common
    from webui.tabs import txt2img as txt2img_tab

    with gr.Blocks():
        runners["txt2img"].setup_ui()
    processed = run_script(runners["txt2img"], txt2img_job(), "X/Y/Z plot",
                           xyz_args(x=("Steps", "1-2"), y=("Seed", "5, 6"), legend=False))
    updates = txt2img_tab.paste_parameters(processed.infotexts[0])[len(txt2img_tab.PASTE_FIELDS) + 1:]
    pasted = {component.elem_id: update.get("value") for component, update
              in zip(ui_common.script_paste_components("txt2img"), updates) if "value" in update}
    assert pasted["txt2img_script_dropdown"] == "X/Y/Z plot"
    assert pasted["script_txt2img_xyz_plot_x_type"] == "Steps" and pasted["script_txt2img_xyz_plot_x_values"] == "1-2"
    assert pasted["script_txt2img_xyz_plot_y_type"] == "Seed" and pasted["script_txt2img_xyz_plot_y_values"] == "5, 6"
    assert "script_txt2img_xyz_plot_z_type" not in pasted  # the infotext has no Z axis: left as it is
    plain = processing.create_infotext(txt2img_job(), ["a cat"], [1], [1])
    updates = txt2img_tab.paste_parameters(plain)[len(txt2img_tab.PASTE_FIELDS) + 1:]
    dropdown = [update for component, update in zip(ui_common.script_paste_components("txt2img"), updates)
                if component.elem_id == "txt2img_script_dropdown"]
    assert dropdown[0]["value"] == "None"  # an ordinary infotext deselects the script


# ---------------------------------------------------------------- face detailer (always-on)

DETAILER = {"Face detailer": {"args": [True, 0.5, "a detailed face", "", 8, 2]}}


def test_face_detailer_rerenders_only_the_face_at_full_resolution(runners, tiny_model, fake_face, monkeypatch):
    from modules import infotext_utils, processing
    from tests.conftest import DenoiserCalls

    nested = []
    inner = processing.process_images_inner

    def record(job):
        result = inner(job)
        nested.append(job)
        return result

    monkeypatch.setattr(processing, "process_images_inner", record)

    def run(alwayson):
        with DenoiserCalls() as calls:
            return run_script(runners["txt2img"], txt2img_job(prompt="a face", seed=9, steps=4), None, None,
                              alwayson), calls.calls

    plain, _ = run(None)
    detailed, calls = run(DETAILER)
    shapes = {tuple(c.x.shape[-2:]) for c in calls}
    assert shapes == {(8, 8)}  # the face crop (24 px + padding) is rendered at the job's 64x64, not at its own size
    assert len(calls) > 4  # the txt2img steps plus the detailer's img2img steps
    detail_job = next(job for job in nested if job.nested_job)
    assert detail_job.inpaint_full_res and detail_job.paste_to is not None and detail_job.prompt == "a detailed face"
    _, _, crop_w, crop_h = detail_job.paste_to  # the face box grown by 10% and padded by 8 px: 44 px, drawn at 64
    assert crop_w < 64 and crop_h < 64 and detail_job.seed == plain.seed
    diff = np.abs(pixels(plain.images[0]) - pixels(detailed.images[0])).max(axis=2)
    x, y, w, h = fake_face.box
    assert diff[y:y + h, x:x + w].mean() > 5
    far = np.ones_like(diff, dtype=bool)
    far[y - 10:y + h + 10, x - 10:x + w + 10] = False
    assert diff[far].max() <= 2
    params = infotext_utils.parse_generation_parameters(detailed.infotexts[0])
    assert params["Face detailer"] == "True" and params["Face detailer denoising strength"] == "0.5"
    assert params["Face detailer prompt"] == "a detailed face" and params["Face detailer padding"] == "8"
    assert "Face detailer" not in infotext_utils.parse_generation_parameters(plain.infotexts[0])


def test_face_detailer_controls_paste_back_from_the_infotext(runners, tiny_model, fake_face):
    import gradio as gr

    from webui import ui_common
    from webui.tabs import txt2img as txt2img_tab

    with gr.Blocks():
        runners["txt2img"].setup_ui()
    detailed = run_script(runners["txt2img"], txt2img_job(prompt="a face", seed=9, steps=2), None, None, DETAILER)
    updates = txt2img_tab.paste_parameters(detailed.infotexts[0])[len(txt2img_tab.PASTE_FIELDS) + 1:]
    pasted = {component.elem_id: update.get("value") for component, update
              in zip(ui_common.script_paste_components("txt2img"), updates) if "value" in update}
    prefix = "script_txt2img_face_detailer_"
    assert pasted[prefix + "enabled"] is True and pasted[prefix + "prompt"] == "a detailed face"
    assert pasted[prefix + "padding"] == 8 and pasted[prefix + "mask_blur"] == 2
    assert pasted[prefix + "denoising_strength"] == 0.5
    updates = txt2img_tab.paste_parameters("a cat\nSteps: 3, Seed: 1")[len(txt2img_tab.PASTE_FIELDS) + 1:]
    pasted = {component.elem_id: update.get("value") for component, update
              in zip(ui_common.script_paste_components("txt2img"), updates) if "value" in update}
    assert pasted[prefix + "enabled"] is False  # an infotext without the detailer turns it off


def test_face_detailer_refuses_bad_arguments_by_name(runners, tiny_model):
    from modules.errors import UserInputError

    bad = {"Face detailer": {"args": [True, 1.5]}}
    with pytest.raises(UserInputError, match="Face detailer: denoising strength must be between 0 and 1"):
        run_script(runners["txt2img"], txt2img_job(), None, None, bad)
