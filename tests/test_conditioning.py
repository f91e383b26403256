"""Conditioning on the tiny model: chunks, BREAK, comma back-off, emphasis modes, per-step schedules,
AND, and encoding identical prompts once."""
from __future__ import annotations

import pytest
import torch

from modules.engine import conditioning, prompt_chunks
from modules.shared import opts
from tests.conftest import DenoiserCalls, pixels, txt2img


def encoder(model, **kwargs):
    return conditioning.PromptEncoder(model, **kwargs)


def test_chunk_count_sets_the_length(tiny_model):
    enc = encoder(tiny_model)
    width = tiny_model.text_encoder.get_input_embeddings().weight.shape[1]
    assert enc.encode(["a cat"]).shape == (1, 77, width)
    assert enc.encode(["cat " * 80]).shape == (1, 154, width)
    assert enc.encode([""]).shape == (1, 77, width)
    # texts encoded together share a length: the shorter one gets an empty chunk
    assert enc.encode(["a", "cat " * 160]).shape == (2, 231, width)


def test_break_and_comma_backoff_positions(tiny_model):
    enc = encoder(tiny_model)
    ids = enc.ids
    cat, dog = enc.tokenize(["cat", "dog"])
    chunks, count = enc.chunks("cat BREAK dog")
    assert [c.tokens[:3] for c in chunks] == [[ids.start, *cat, ids.end], [ids.start, *dog, ids.end]]
    assert all(len(c.tokens) == 77 for c in chunks) and count == 76

    chunks, _ = enc.chunks("cat " * 70 + ", " + "dog " * 10)
    assert chunks[0].tokens[1:72] == cat * 70 + [ids.comma]
    assert chunks[0].tokens[72:] == [ids.end] * 5  # the 4 dogs after the comma moved on
    assert chunks[1].tokens[1:11] == dog * 10

    no_backoff = encoder(tiny_model, comma_padding_backtrack=0).chunks("cat " * 70 + ", " + "dog " * 10)[0]
    assert no_backoff[0].tokens[72:76] == dog * 4


def test_token_counter_without_a_model():
    from modules.loading import model_loader

    tokenizer = model_loader.load_tokenizer()
    ids = prompt_chunks.special_tokens(tokenizer)

    def tokenize(texts):
        return tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def count(text, **kw):
        return prompt_chunks.prompt_token_count(text, 20, tokenize, ids, **kw)

    assert count("a cat") == (2, 75)
    assert count("cat " * 80) == (80, 150)
    assert count("a BREAK b") == (76, 150)
    assert count("a <lora:x:1> cat # comment") == (2, 75)
    assert count("[short:" + "cat " * 90 + ":5]") == (90, 150)  # the longest scheduled text counts
    assert count("cat AND " + "dog " * 76) == (76, 150)


def test_emphasis_modes(tiny_model):
    plain = encoder(tiny_model).encode(["cat dog"])[0]
    original = encoder(tiny_model).encode(["(cat:1.5) dog"])[0]
    no_norm = encoder(tiny_model, emphasis="No norm").encode(["(cat:1.5) dog"])[0]
    ignore = encoder(tiny_model, emphasis="Ignore").encode(["(cat:1.5) dog"])[0]
    literal = encoder(tiny_model, emphasis="None").chunks("(cat:1.5) dog")[0][0]

    assert torch.allclose(no_norm[1], plain[1] * 1.5) and torch.equal(no_norm[2], plain[2])
    assert not torch.allclose(original, plain)
    # Original = the weighted states rescaled so the chunk keeps the unweighted mean
    assert torch.allclose(original, no_norm * (plain.mean() / no_norm.mean()), rtol=1e-4, atol=1e-5)
    assert torch.equal(ignore, plain)
    assert 7 in literal.tokens[1:4] or len([t for t in literal.tokens if t not in (49406, 49407)]) > 2


def test_original_emphasis_keeps_the_chunk_mean():
    from modules import sd_emphasis

    z = torch.randn(2, 77, 8, generator=torch.Generator().manual_seed(0)).abs() + 0.5  # positive: a clear mean
    multipliers = torch.ones(2, 77)
    multipliers[0, 3:6] = 1.4
    multipliers[1, 10] = 0.5
    out = sd_emphasis.EmphasisOriginal().after_transformers(z, multipliers)
    assert torch.isclose(out.mean(), z.mean(), rtol=1e-5) and not torch.allclose(out, z)
    no_norm = sd_emphasis.EmphasisOriginalNoNorm().after_transformers(z, multipliers)
    assert torch.allclose(no_norm[0, 4], z[0, 4] * 1.4) and not torch.isclose(no_norm.mean(), z.mean(), rtol=1e-3)


def test_clip_skip_changes_the_conditioning(tiny_model):
    assert not torch.allclose(encoder(tiny_model).encode(["cat"]), encoder(tiny_model, clip_skip=2).encode(["cat"]))


class Recorder(DenoiserCalls):
    """The text conditioning of every model call: (step, total steps, cond, uncond)."""

    def __call__(self, params):
        self.calls.append((params.sampling_step, params.total_sampling_steps, params.text_cond.clone(), params.text_uncond.clone()))


def _nearest(tensor, options):
    distances = {name: (tensor - option).abs().max().item() for name, option in options.items()}
    name = min(distances, key=distances.get)
    assert distances[name] < 1e-4, distances
    return name


def _which(recorded, options):
    return [_nearest(cond[0], options) for _, _, cond, _ in recorded]


def test_prompt_editing_switches_at_the_right_call(tiny_model):
    enc = encoder(tiny_model)
    options = {"cat": enc.encode(["cat"])[0], "dog": enc.encode(["dog"])[0]}
    with Recorder() as recorder:
        txt2img(prompt="[cat:dog:2]", steps=4)
    # "from" is used while the 0-based model-call counter is <= 2
    assert _which(recorder.calls, options) == ["cat", "cat", "cat", "dog"]
    assert [c[0] for c in recorder.calls] == [0, 1, 2, 3] and recorder.calls[0][1] == 4

    with Recorder() as recorder:
        txt2img(prompt="[cat|dog]", steps=4)
    assert _which(recorder.calls, options) == ["cat", "cat", "dog", "cat"]

    with Recorder() as recorder:  # negative prompts are scheduled too
        txt2img(prompt="cat", negative_prompt="[cat:dog:0.5]", steps=4)
    assert [_nearest(u[0], options) for *_, u in recorder.calls] == ["cat", "cat", "cat", "dog"]


def test_second_order_samplers_count_model_calls(tiny_model):
    with Recorder() as recorder:
        txt2img(prompt="[cat:dog:0.5]", steps=4, sampler_name="Heun")
    options = {"cat": encoder(tiny_model).encode(["cat"])[0], "dog": encoder(tiny_model).encode(["dog"])[0]}
    assert recorder.calls[0][1] == 8  # schedules count 2 calls per step, as A1111
    assert _which(recorder.calls, options) == ["cat"] * 5 + ["dog"] * 2


def test_and_weights_change_the_result(tiny_model):
    base = pixels(txt2img(prompt="cat").images[0])
    both = pixels(txt2img(prompt="cat AND dog").images[0])
    weighted = pixels(txt2img(prompt="cat AND dog:0.2").images[0])
    zero = pixels(txt2img(prompt="cat AND dog:0").images[0])
    assert (both != weighted).any() and (both != base).any()
    assert abs(zero - base).max() <= 1  # a zero-weight part contributes nothing
    with Recorder() as recorder:
        txt2img(prompt="cat AND dog", steps=2)
    assert recorder.calls[0][2].shape[0] == 2  # one UNet batch row per AND part


def test_unequal_cond_and_uncond_lengths_are_padded(tiny_model):
    image = txt2img(prompt="cat " * 100, negative_prompt="dog").images[0]
    assert image.size == (64, 64)


def test_identical_prompts_are_encoded_once(tiny_model):
    calls = []
    handle = tiny_model.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i))
    try:
        txt2img(prompt="a cat", batch_size=1)
        single = len(calls)
        calls.clear()
        txt2img(prompt="a cat", batch_size=3)
        assert len(calls) == single
        calls.clear()
        txt2img(prompt="a cat", batch_size=2, n_iter=2)  # the next batch reuses the first one's encoding
        assert len(calls) == single
    finally:
        handle.remove()


def test_emphasis_and_old_timelines_in_infotext(tiny_model):
    opts.set("emphasis", "No norm")
    assert "Emphasis: No norm" in txt2img(prompt="(cat:1.2)").info
    opts.set("emphasis", "Original")
    assert "Emphasis" not in txt2img(prompt="(cat:1.2)").info
    opts.set("use_old_scheduling", True)
    assert "Old prompt editing timelines: True" in txt2img(prompt="[cat:dog:1.5]", steps=4).info


def test_comments_are_stripped(tiny_model):
    processed = txt2img(prompt="a cat # with a comment\n# whole line")
    assert processed.all_prompts[0] == "a cat \n"


@pytest.mark.parametrize("bad", ["[a:b:1e999]", "(" * 3000, "a | b \\"])
def test_odd_prompts_still_generate(tiny_model, bad):
    assert txt2img(prompt=bad, steps=2).images
