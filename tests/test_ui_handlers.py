"""UI handlers without a browser: errors are shown to the user, results come from the queue."""
from __future__ import annotations

from webui import ui


def _args(**overrides):
    values = dict(prompt="a cat", negative_prompt="", sampler_name="Euler", scheduler="Automatic", steps=3,
                  cfg_scale=7, width=64, height=64, seed=99, use_variation=False, subseed=-1, subseed_strength=0,
                  seed_resize_from_w=0, seed_resize_from_h=0, batch_count=1, batch_size=1, styles=[])
    values.update(overrides)
    return list(values.values())


def test_bad_size_shows_an_error_and_submits_nothing(tiny_model):
    updates = list(ui.generate(*_args(width=100)))
    assert len(updates) == 1
    assert "Error: width must be a multiple of 8 between 64 and 2048, got 100" in updates[0][1]


def test_generate_streams_until_the_result(tiny_model):
    updates = list(ui.generate(*_args()))
    gallery, progress, _preview, info, result, job_id = updates[-1]
    assert len(gallery) == 1 and gallery[0].endswith("-99.png")
    assert "Seed: 99" in info and result["seed"] == 99 and job_id.startswith("task(")


def test_token_counter_counts_as_the_user_types(tiny_model):
    assert ">2/75<" in ui.update_token_counter("a cat", 20)
    assert ">80/150<" in ui.update_token_counter("cat " * 80, 20)
    assert ">76/150<" in ui.update_token_counter("a BREAK b", 20, False)


def test_styles_apply_and_save(tiny_model, tmp_path):
    from modules import shared
    from modules.styles import StyleDatabase

    saved = shared.prompt_styles
    shared.prompt_styles = StyleDatabase([str(tmp_path / "styles.csv")])
    try:
        choices, status = ui.save_style("moody", "dark, {prompt}, rain", "sunny")
        assert "moody" in choices["choices"] and "Saved style moody" in status
        assert "dark, {prompt}, rain" in (tmp_path / "styles.csv").read_text()
        prompt, negative, cleared = ui.apply_styles("a street", "blur", ["moody"])
        assert (prompt, negative, cleared["value"]) == ("dark, a street, rain", "blur, sunny", [])
        _, error = ui.save_style("", "x", "")
        assert "Error: style name: must not be empty" in error
        updates = list(ui.generate(*_args(styles=["moody"])))
        assert "dark, a cat, rain" in updates[-1][3]
    finally:
        shared.prompt_styles = saved


def test_extra_network_cards_insert_into_the_prompt(tiny_model):
    assert ui.add_lora_to_prompt(["detail"], "a cat") == "a cat, <lora:detail:1>"
    assert ui.add_embedding_to_prompt(["myemb"], "") == "myemb"
    loras, embeddings, skipped = ui.refresh_extra_networks()
    assert isinstance(skipped, str)


def test_job_warnings_are_shown(tiny_model):
    updates = list(ui.generate(*_args(prompt="a cat <lora:missing:1>")))
    assert "Networks not found: missing" in updates[-1][3]
