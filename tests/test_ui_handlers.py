"""UI handlers without a browser: errors are shown to the user, results come from the queue."""
from __future__ import annotations

from PIL import Image

from webui import ui, ui_common
from webui.tabs import img2img as img2img_tab
from webui.tabs import pnginfo as pnginfo_tab
from webui.tabs import txt2img as txt2img_tab


def _args(**overrides):
    values = dict(prompt="a cat", negative_prompt="", sampler_name="Euler", scheduler="Automatic", steps=3,
                  cfg_scale=7, width=64, height=64, seed=99, use_variation=False, subseed=-1, subseed_strength=0,
                  seed_resize_from_w=0, seed_resize_from_h=0, batch_count=1, batch_size=1, styles=[])
    values.update(overrides)
    return values


def test_bad_size_shows_an_error_and_submits_nothing(tiny_model):
    updates = list(txt2img_tab.generate(_args(width=100)))
    assert len(updates) == 1
    assert "Error: width must be a multiple of 8 between 64 and 2048, got 100" in updates[0][1]


def test_generate_streams_until_the_result(tiny_model):
    updates = list(txt2img_tab.generate(_args()))
    gallery, progress, _preview, info, result, job_id = updates[-1]
    assert len(gallery) == 1 and gallery[0].endswith("-99.png")
    assert "Seed: 99" in info and result["seed"] == 99 and job_id.startswith("task(")


def test_token_counter_counts_as_the_user_types(tiny_model):
    assert ">2/75<" in ui_common.update_token_counter("a cat", 20)
    assert ">80/150<" in ui_common.update_token_counter("cat " * 80, 20)
    assert ">76/150<" in ui_common.update_token_counter("a BREAK b", 20, False)


def test_styles_apply_and_save(tiny_model, tmp_path):
    from modules import shared
    from modules.styles import StyleDatabase

    saved = shared.prompt_styles
    shared.prompt_styles = StyleDatabase([str(tmp_path / "styles.csv")])
    try:
        choices, status = txt2img_tab.save_style("moody", "dark, {prompt}, rain", "sunny")
        assert "moody" in choices["choices"] and "Saved style moody" in status
        assert "dark, {prompt}, rain" in (tmp_path / "styles.csv").read_text()
        prompt, negative, cleared = txt2img_tab.apply_styles("a street", "blur", ["moody"])
        assert (prompt, negative, cleared["value"]) == ("dark, a street, rain", "blur, sunny", [])
        _, error = txt2img_tab.save_style("", "x", "")
        assert "Error: style name: must not be empty" in error
        updates = list(txt2img_tab.generate(_args(styles=["moody"])))
        assert "dark, a cat, rain" in updates[-1][3]
    finally:
        shared.prompt_styles = saved


def test_extra_network_cards_insert_into_the_prompt(tiny_model):
    assert txt2img_tab.add_lora_to_prompt(["detail"], "a cat") == "a cat, <lora:detail:1>"
    assert txt2img_tab.add_embedding_to_prompt(["myemb"], "") == "myemb"
    assert txt2img_tab.add_hypernetwork_to_prompt(["anime"], "a cat") == "a cat, <hypernet:anime:1>"
    loras, hypernetworks, embeddings, skipped = txt2img_tab.refresh_extra_networks()
    assert isinstance(skipped, str)


def test_job_warnings_are_shown(tiny_model):
    updates = list(txt2img_tab.generate(_args(prompt="a cat <lora:missing:1>")))
    assert "Networks not found: missing" in updates[-1][3]


A1111_INFOTEXT = """masterpiece, a lighthouse at dusk, (dramatic lighting:1.2) <lora:add_detail:0.5>
Negative prompt: blurry, lowres
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Variation seed: 42, Variation seed strength: 0.3, Seed resize from: 448x640, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1"""


def test_paste_fills_every_field_from_an_a1111_infotext(tiny_model):
    updates = dict(zip(txt2img_tab.PASTE_FIELDS, txt2img_tab.paste_parameters(A1111_INFOTEXT)))
    values = {name: update["value"] for name, update in updates.items() if "value" in update}
    assert values == {
        "prompt": "masterpiece, a lighthouse at dusk, (dramatic lighting:1.2) <lora:add_detail:0.5>",
        "negative_prompt": "blurry, lowres", "sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 28,
        "cfg_scale": 6.5, "width": 512, "height": 768, "seed": 3141592653, "use_variation": True, "subseed": 42,
        "subseed_strength": 0.3, "seed_resize_from_w": 448, "seed_resize_from_h": 640, "enable_hr": False,
        "restore_faces": False, "refiner_enabled": False,
    }
    # legacy combined sampler names and missing keys
    legacy = dict(zip(txt2img_tab.PASTE_FIELDS, txt2img_tab.paste_parameters("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5")))
    assert legacy["sampler_name"]["value"] == "Euler a" and "value" not in legacy["width"]


def test_paste_with_an_empty_box_uses_the_last_generation(tiny_model):
    from tests.conftest import txt2img

    txt2img(prompt="from params", seed=777)
    updates = dict(zip(txt2img_tab.PASTE_FIELDS, txt2img_tab.paste_parameters("")))
    assert updates["prompt"]["value"] == "from params" and updates["seed"]["value"] == 777


def test_png_info_reads_our_images_and_sends_them_to_txt2img(tiny_model, tmp_path):
    from modules import images
    from tests.conftest import txt2img

    processed = txt2img(prompt="png info cat", seed=4242)
    path = str(tmp_path / "x.png")
    images.save_image_with_geninfo(processed.images[0], processed.infotexts[0], path)
    shown, text = pnginfo_tab.read_png_info(path)
    assert "png info cat" in shown and "Seed: 4242" in text
    tab, *fields = txt2img_tab.receive_infotext(text)
    assert tab.selected == "txt2img" and dict(zip(txt2img_tab.PASTE_FIELDS, fields))["seed"]["value"] == 4242

    (tmp_path / "plain.png").write_bytes((tmp_path / "x.png").read_bytes())
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "bare.png")
    assert "No generation parameters" in pnginfo_tab.read_png_info(str(tmp_path / "bare.png"))[0]
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert "Error: image: not a readable image" in pnginfo_tab.read_png_info(str(tmp_path / "junk.png"))[0]


A1111_HIRES = """a castle
Negative prompt: fog
Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 11, Size: 512x512, Model hash: 6ce0161689, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.5, Hires steps: 8, Hires upscaler: Latent (nearest-exact), Hires sampler: DDIM, Hires prompt: "a castle, detailed", Version: v1.10.1"""


def test_paste_fills_hires_fields_and_override_settings(tiny_model):
    updates = txt2img_tab.paste_parameters(A1111_HIRES)
    values = {name: u["value"] for name, u in zip(txt2img_tab.PASTE_FIELDS, updates) if "value" in u}
    assert values["enable_hr"] is True and values["denoising_strength"] == 0.45 and values["hr_scale"] == 1.5
    assert values["hr_upscaler"] == "Latent (nearest-exact)" and values["hr_second_pass_steps"] == 8
    assert values["hr_sampler_name"] == "DDIM" and values["hr_scheduler"] == "Use same scheduler"
    assert values["hr_prompt"] == "a castle, detailed" and values["hr_resize_x"] == 0
    override = updates[len(txt2img_tab.PASTE_FIELDS)]
    assert override["value"] == ["Clip skip: 2"] and override["visible"] is True  # the model hash matches no local file


def test_generate_with_hires_and_override_settings(tiny_model):
    from modules.shared import opts

    args = _args(width=64, height=64)
    updates = list(txt2img_tab.generate(dict(args, enable_hr=True, denoising_strength=0.5, hr_scale=1.5, hr_upscaler="Lanczos",
                                             override_settings=["Clip skip: 2"])))
    gallery, _progress, _preview, info, result, _job = updates[-1]
    assert result["images"][0].size == (96, 96)
    assert "Hires upscale: 1.5" in info and "Hires upscaler: Lanczos" in info and "Clip skip: 2" in info
    assert opts.CLIP_stop_at_last_layers == 1  # the override lasts for one job
    bad = list(txt2img_tab.generate(dict(args, override_settings=["Not a setting: 3"])))
    assert "Error: override settings: unknown setting &#x27;Not a setting&#x27;" in bad[0][1]


def test_send_to_img2img_and_inpaint(tiny_model):
    from modules.shared import opts

    result = list(txt2img_tab.generate(_args(prompt="send me", negative_prompt="not this", seed=31, batch_size=2)))[-1][4]
    result = {**result, "selected": 2}  # the grid is first; pick the second image
    updates = img2img_tab.receive_result(result, "img2img")
    main_tab, mode_tab, mode, _controls, image, editor = updates[:img2img_tab.SEND_TARGET_UPDATES]
    assert main_tab.selected == "img2img" and mode_tab.selected == "img2img" and mode == "img2img"
    assert image["value"] is result["images"][2]
    fields = {n: u["value"] for n, u in zip(img2img_tab.SEND_FIELDS, updates[img2img_tab.SEND_TARGET_UPDATES:]) if "value" in u}
    assert fields == {"prompt": "send me", "negative_prompt": "not this", "steps": 3, "seed": 32, "width": 64, "height": 64}
    opts.send_seed = False
    updates = img2img_tab.receive_result(result, "inpaint")
    assert updates[1].selected == "inpaint" and updates[2] == "inpaint"
    assert updates[5]["value"]["background"] is result["images"][2]
    fields = {n: u["value"] for n, u in zip(img2img_tab.SEND_FIELDS, updates[img2img_tab.SEND_TARGET_UPDATES:]) if "value" in u}
    assert "seed" not in fields


def test_png_info_sends_to_img2img_with_every_field(tiny_model, tmp_path):
    from modules import images
    from tests.conftest import img2img, noise_image

    _, processed = img2img([noise_image(64, 64)], mask=Image.new("L", (64, 64), 255), inpaint_full_res=False,
                           inpainting_fill=2, mask_blur=6, denoising_strength=0.4, seed=77)
    path = str(tmp_path / "inpainted.png")
    images.save_image_with_geninfo(processed.images[0], processed.infotexts[0], path)
    _, text = pnginfo_tab.read_png_info(path)
    updates = img2img_tab.receive_png(path, text, "inpaint")
    assert updates[1].selected == "inpaint" and updates[5]["value"]["background"].size == (64, 64)
    fields = {n: u["value"] for n, u in zip(img2img_tab.PASTE_FIELDS, updates[img2img_tab.SEND_TARGET_UPDATES:]) if "value" in u}
    assert fields["seed"] == 77 and fields["denoising_strength"] == 0.4 and fields["mask_blur"] == 6
    assert fields["inpainting_fill"] == "latent noise" and fields["inpaint_full_res"] == "Whole picture"
    assert fields["inpainting_mask_invert"] == "Inpaint masked" and fields["initial_noise_multiplier"] == 1.0


def test_the_vae_dropdown_saves_the_setting(tiny_model, data_dir):
    import json

    from modules import sd_vae
    from modules.shared import opts

    assert sd_vae.choices()[:2] == ["Automatic", "None"]
    assert ui.change_vae("None") == "" and opts.sd_vae == "None"
    with open(data_dir / "config.json", encoding="utf8") as f:
        assert json.load(f)["sd_vae"] == "None"
    assert "not found" in ui.change_vae("nothing.safetensors") and opts.sd_vae == "None"
    opts.set("sd_vae", "Automatic")
