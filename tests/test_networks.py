"""Textual inversion, LoRA, the extra-network registry and styles, through the real file formats."""
from __future__ import annotations

import os

import pytest
import torch

from modules import extra_networks
from modules.engine import conditioning
from modules.networks import lora
from modules.errors import UserInputError
from modules.textual_inversion import textual_inversion
from tests.conftest import models_subdir, pixels, txt2img, write_embedding, write_kohya_lora, write_lora_shapes


@pytest.fixture()
def embeddings_dir(tiny_model):
    with models_subdir("embeddings") as folder:
        yield folder


@pytest.fixture()
def lora_dir(tiny_model):
    with models_subdir("Lora") as folder:
        yield folder
    lora.applied_networks().restore()


def _width(model):
    return model.text_encoder.get_input_embeddings().weight.shape[1]


def test_embedding_formats_widths_and_reload(tiny_model, embeddings_dir):
    width = _width(tiny_model)
    write_embedding(os.path.join(embeddings_dir, "style-a.pt"), torch.randn(2, width), "a1111-pt")
    write_embedding(os.path.join(embeddings_dir, "sub", "style-b.safetensors"), torch.randn(3, width), "safetensors")
    write_embedding(os.path.join(embeddings_dir, "concept.bin"), torch.randn(1, width), "diffusers-bin")
    write_embedding(os.path.join(embeddings_dir, "wide.safetensors"), torch.randn(1, width * 2), "safetensors")
    with open(os.path.join(embeddings_dir, "broken.pt"), "wb") as f:
        f.write(b"not a pickle")
    db = textual_inversion.refresh_for_model(tiny_model)
    assert {n: e.vectors for n, e in db.word_embeddings.items()} == {"style-a": 2, "style-b": 3, "concept": 1}
    assert db.word_embeddings["style-a"].step == 500
    assert db.skip_reasons["wide"] == (f"an embedding for a model with {width * 2}-wide text conditioning "
                                       f"(width {width * 2}); this model's text encoder is {width} wide")
    assert any("broken.pt" in path for path in textual_inversion.embedding_db.errors)
    assert "wide" in textual_inversion.refresh_for_model(None, tiny_model.tokenizer).word_embeddings  # counting only

    write_embedding(os.path.join(embeddings_dir, "late.safetensors"), torch.randn(1, width), "safetensors")
    os.remove(os.path.join(embeddings_dir, "concept.bin"))
    db = textual_inversion.refresh_for_model(tiny_model)
    assert "late" in db.word_embeddings and "concept" not in db.word_embeddings


def test_an_embedding_of_another_family_is_skipped_with_a_warning_naming_its_family(tiny_model, embeddings_dir):
    write_embedding(os.path.join(embeddings_dir, "sd2look.safetensors"), torch.randn(1, 1024), "safetensors")
    write_embedding(os.path.join(embeddings_dir, "xllook.safetensors"), {"clip_l": torch.randn(1, 768),
                                                                         "clip_g": torch.randn(1, 1280)}, "sdxl")
    db = textual_inversion.refresh_for_model(tiny_model)
    assert db.skip_reasons["sd2look"].startswith("an embedding for SD 2.x (width 1024); ")
    assert db.skip_reasons["xllook"] == "an SDXL embedding (clip_l + clip_g); this model has one text encoder"
    processed = txt2img(prompt="a cat, sd2look", negative_prompt="xllook")
    assert f"Embedding sd2look skipped: {db.skip_reasons['sd2look']}" in processed.comments
    assert f"Embedding xllook skipped: {db.skip_reasons['xllook']}" in processed.comments
    assert "TI hashes" not in processed.info
    assert "Embedding" not in txt2img(prompt="a cat, sd2looks").comments  # a longer word is not the name


def test_embedding_replaces_its_token_positions(tiny_model, embeddings_dir):
    width = _width(tiny_model)
    path = write_embedding(os.path.join(embeddings_dir, "myemb.safetensors"), torch.randn(2, width), "safetensors")
    db = textual_inversion.refresh_for_model(tiny_model)
    enc = conditioning.PromptEncoder(tiny_model, embeddings=db)
    chunk = enc.chunks("a myemb cat")[0][0]
    a, cat = enc.tokenize(["a", "cat"])
    assert chunk.tokens[:5] == [enc.ids.start, *a, 0, 0, *cat]
    assert [(fix.offset, fix.embedding.name) for fix in chunk.fixes] == [(1, "myemb")]
    first = enc.encode(["a myemb cat"])[0]

    write_embedding(path, torch.randn(2, width), "safetensors")  # same name, new vectors
    db = textual_inversion.refresh_for_model(tiny_model)
    second = conditioning.PromptEncoder(tiny_model, embeddings=db).encode(["a myemb cat"])[0]
    # causal attention: positions before the embedding cannot see it; from its first vector on they change
    assert torch.equal(first[:2], second[:2]) and not torch.allclose(first[2], second[2])

    processed = txt2img(prompt="a myemb cat", negative_prompt="myemb")
    assert f"TI hashes: \"myemb: {db.word_embeddings['myemb'].shorthash}\"" in processed.info


def test_embedding_vectors_stay_in_one_chunk(tiny_model, embeddings_dir):
    write_embedding(os.path.join(embeddings_dir, "four.safetensors"), torch.randn(4, _width(tiny_model)), "safetensors")
    enc = conditioning.PromptEncoder(tiny_model, embeddings=textual_inversion.refresh_for_model(tiny_model))
    chunks, _ = enc.chunks("cat " * 73 + "four")
    assert len(chunks) == 2 and chunks[1].fixes[0].offset == 0 and chunks[1].tokens[1:5] == [0, 0, 0, 0]


def test_lora_changes_the_image_and_is_removed_afterwards(tiny_model, lora_dir):
    write_kohya_lora(os.path.join(lora_dir, "detail.safetensors"), tiny_model)
    before = pixels(txt2img(prompt="a cat").images[0])
    weights_before = {k: v.clone() for k, v in tiny_model.unet.state_dict().items()}
    with_lora = txt2img(prompt="a cat <lora:detail:1>")
    after = pixels(txt2img(prompt="a cat").images[0])

    assert (pixels(with_lora.images[0]) != before).any()
    assert (after == before).all()  # bit-identical once the job is over
    assert all(torch.equal(v, weights_before[k]) for k, v in tiny_model.unet.state_dict().items())
    network = lora.registry.find("detail")
    assert f'Lora hashes: "detail: {network.shorthash}"' in with_lora.info
    assert "<lora:detail:1>" in with_lora.info.splitlines()[0]  # the infotext keeps the prompt as written
    assert network.shorthash == lora.addnet_hash_safetensors(network.filename)[:12]


def test_lora_multipliers(tiny_model, lora_dir):
    write_kohya_lora(os.path.join(lora_dir, "detail.safetensors"), tiny_model)
    base = pixels(txt2img(prompt="a cat").images[0])
    zero = pixels(txt2img(prompt="a cat <lora:detail:0>").images[0])
    half = pixels(txt2img(prompt="a cat <lora:detail:0.5>").images[0])
    unet_only = pixels(txt2img(prompt="a cat <lora:detail:te=0:unet=1>").images[0])
    te_only = pixels(txt2img(prompt="a cat <lora:detail:1:0>").images[0])
    assert (zero == base).all()
    assert (half != base).any() and (unet_only != base).any() and (te_only != base).any() and (unet_only != te_only).any()


def test_two_loras_and_peft_layout(tiny_model, lora_dir):
    write_kohya_lora(os.path.join(lora_dir, "kohya.safetensors"), tiny_model, seed=3)
    write_kohya_lora(os.path.join(lora_dir, "peft.safetensors"), tiny_model, seed=3, peft=True)
    write_kohya_lora(os.path.join(lora_dir, "other.safetensors"), tiny_model, seed=4)
    kohya = pixels(txt2img(prompt="a cat <lora:kohya:0.7>").images[0])
    peft = pixels(txt2img(prompt="a cat <lora:peft:0.7>").images[0])
    assert abs(kohya - peft).max() <= 1  # same deltas, read from two key layouts
    both = txt2img(prompt="a cat <lora:kohya:0.7> <lyco:other:0.5>")
    assert (pixels(both.images[0]) != kohya).any()
    assert "kohya: " in both.info and "other: " in both.info


def test_unknown_lora_is_a_warning_and_bad_multiplier_an_error(tiny_model, lora_dir):
    base = pixels(txt2img(prompt="a cat").images[0])
    processed = txt2img(prompt="a cat <lora:nope:1>")
    assert "Networks not found: nope" in processed.comments
    assert (pixels(processed.images[0]) == base).all()
    write_kohya_lora(os.path.join(lora_dir, "detail.safetensors"), tiny_model)
    with pytest.raises(UserInputError, match="multiplier 'x' is not a number"):
        txt2img(prompt="a cat <lora:detail:x>")
    assert (pixels(txt2img(prompt="a cat").images[0]) == base).all()  # nothing left applied


def test_a_lora_of_another_family_or_that_does_not_fit_is_skipped_whole(tiny_model, lora_dir):
    """Never merged half-way: an SDXL or SD 2 LoRA on SD 1.x, or one whose layers do not all fit, changes nothing
    and the job says which network and why."""
    unet = tiny_model.unet
    to_k = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
    to_q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    fits = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            (2, to_q.in_features, to_q.out_features))
    write_lora_shapes(os.path.join(lora_dir, "xl.safetensors"), {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (4, 2048, 640),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (4, 768, 768)})
    write_lora_shapes(os.path.join(lora_dir, "xl-text.safetensors"), {
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (4, 1280, 1280)})
    write_lora_shapes(os.path.join(lora_dir, "sd2.safetensors"), {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (4, 1024, to_k.out_features)})
    write_lora_shapes(os.path.join(lora_dir, "half.safetensors"), dict([fits, (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k", (2, to_q.in_features + 1, 7))]))
    write_lora_shapes(os.path.join(lora_dir, "whole.safetensors"), dict([fits]))
    base = pixels(txt2img(prompt="a cat").images[0])
    label = tiny_model.family.label
    for name, warning in [("xl", f"LoRA xl is for SDXL, not for this {label} model: skipped"),
                          ("xl-text", f"LoRA xl-text is for SDXL, not for this {label} model: skipped"),
                          ("sd2", f"LoRA sd2 is for SD 2.x, not for this {label} model: skipped"),
                          ("half", "LoRA half: 1 layers do not fit this model (lora_unet_down_blocks_0_attentions_0_"
                                   "transformer_blocks_0_attn1_to_k: ")]:
        processed = txt2img(prompt=f"a cat <lora:{name}:1>")
        assert warning in processed.comments, (name, processed.comments)
        assert (pixels(processed.images[0]) == base).all(), name
    assert (pixels(txt2img(prompt="a cat <lora:whole:1>").images[0]) != base).any()  # the fitting layer alone works


def test_lora_delta_math():
    down, up = torch.randn(2, 5), torch.randn(3, 2)
    delta = lora.compute_delta({"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(1.0)}, (3, 5))
    assert torch.allclose(delta, up @ down / 2)
    conv = lora.compute_delta({"lora_down.weight": torch.randn(2, 4, 3, 3), "lora_up.weight": torch.randn(6, 2, 1, 1)}, (6, 4, 3, 3))
    assert conv.shape == (6, 4, 3, 3)
    w = [torch.randn(3, 2), torch.randn(2, 5), torch.randn(3, 2), torch.randn(2, 5)]
    loha = lora.compute_delta(dict(zip(["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"], w)), (3, 5))
    assert torch.allclose(loha, (w[0] @ w[1]) * (w[2] @ w[3]))
    lokr = lora.compute_delta({"lokr_w1": torch.eye(2), "lokr_w2": torch.ones(2, 3)}, (4, 6))
    assert torch.equal(lokr, torch.kron(torch.eye(2), torch.ones(2, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        lora.compute_delta({"lora_down.weight": down, "lora_up.weight": up}, (4, 4))


def test_extra_network_registry_for_extensions(tiny_model):
    seen = []

    class Hypothetical(extra_networks.ExtraNetwork):
        def activate(self, p, params_list):
            seen.append(("activate", [params.items for params in params_list]))

        def deactivate(self, p):
            seen.append(("deactivate",))

    extra_networks.register_extra_network(Hypothetical("mynet"))
    try:
        processed = txt2img(prompt="a cat <mynet:foo:0.5:x=1> <unknownkind:bar>")
        assert seen == [("activate", [["foo", "0.5", "x=1"]]), ("deactivate",)]
        assert processed.all_prompts[0] == "a cat <mynet:foo:0.5:x=1> <unknownkind:bar>"
    finally:
        extra_networks.extra_network_registry.pop("mynet")
    text, found = extra_networks.parse_prompt("a <lora:x:te=0.5:2> b")
    assert text == "a  b" and found["lora"][0].positional == ["x", "2"] and found["lora"][0].named == {"te": "0.5"}


def test_styles_apply_save_and_generate(tiny_model, tmp_path):
    from modules import shared
    from modules.styles import PromptStyle, StyleDatabase

    db = StyleDatabase([str(tmp_path / "styles.csv")])
    db.save_style(PromptStyle("cinematic", "cinematic still of {prompt}, film grain", "cartoon"))
    db.save_style(PromptStyle("sharp", "sharp focus", ""))
    reread = StyleDatabase([str(tmp_path / "styles.csv")])
    assert reread.apply_styles_to_prompt("a cat", ["cinematic", "sharp"]) == "cinematic still of a cat, film grain, sharp focus"
    assert reread.apply_negative_styles_to_prompt("blurry", ["cinematic"]) == "blurry, cartoon"
    with pytest.raises(UserInputError):
        db.save_style(PromptStyle("  ", "x"))

    saved = shared.prompt_styles
    shared.prompt_styles = reread
    try:
        processed = txt2img(prompt="a cat", styles=["cinematic", "missing"])
        assert processed.info.startswith("cinematic still of a cat, film grain\nNegative prompt: cartoon")
        assert "Styles not found: missing" in processed.comments
    finally:
        shared.prompt_styles = saved
