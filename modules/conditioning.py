"""Text conditioning: prompts -> CLIP hidden states (one 77-token window per prompt, clip skip).

The full A1111 prompt language (emphasis, long prompts in 75-token chunks, schedules, AND) builds on
this in the prompt-language work; until then a prompt longer than 75 tokens is truncated.
"""
from __future__ import annotations

from typing import Any


def encode_prompts(model: Any, prompts: list[str], clip_skip: int = 1):
    """Encode each distinct prompt once and return a (len(prompts), 77, hidden) tensor."""
    import torch

    unique = list(dict.fromkeys(prompts))
    tokens = model.tokenizer(unique, padding="max_length", max_length=model.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(model.device)
    with torch.inference_mode():
        if clip_skip <= 1:
            hidden = model.text_encoder(tokens).last_hidden_state
        else:
            out = model.text_encoder(tokens, output_hidden_states=True)
            transformer = getattr(model.text_encoder, "text_model", model.text_encoder)  # layout differs by transformers version
            hidden = transformer.final_layer_norm(out.hidden_states[-clip_skip])
    index = {prompt: i for i, prompt in enumerate(unique)}
    return hidden[[index[p] for p in prompts]].to(model.dtype)

