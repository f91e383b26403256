"""Text conditioning (torch): scheduled prompts -> CLIP hidden states, per step.

A prompt becomes a list of ``ScheduledPromptConditioning(end_at_step, cond)``; ``AND`` parts become
``ComposableScheduledPromptConditioning`` with weights. The sampling loop asks for the tensor of a
given model call with :func:`reconstruct_cond_batch` / :func:`reconstruct_multicond_batch`.
Names follow A1111's ``prompt_parser`` so extensions reading ``p.c``/``p.uc`` find what they expect.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from modules import prompt_parser, sd_emphasis
from modules.engine import prompt_chunks


class DictWithShape(dict):
    """Conditioning made of more than one tensor, in A1111's layout and under its name: SDXL's ``crossattn``
    (tokens, D) context next to its ``vector`` (pooled text embedding and size conditioning). ``shape`` is the
    context's, so code written for a single tensor still reads the token count."""

    @property
    def shape(self):
        return self["crossattn"].shape


def map_cond(function, cond):
    """``function`` applied to a conditioning tensor, or to each tensor of a :class:`DictWithShape`."""
    if isinstance(cond, dict):
        return DictWithShape({key: function(value) for key, value in cond.items()})
    return function(cond)


def split_rows(cond) -> list:
    """The rows of a batch of conditioning: a tensor's rows, or one dict per row of a :class:`DictWithShape`."""
    if isinstance(cond, dict):
        count = len(next(iter(cond.values())))
        return [DictWithShape({key: value[i] for key, value in cond.items()}) for i in range(count)]
    return list(cond)


def cat_conds(conds: list):
    """Concatenate batches of conditioning along the batch dimension (key by key for dicts)."""
    import torch

    if isinstance(conds[0], dict):
        return DictWithShape({key: torch.cat([cond[key] for cond in conds]) for key in conds[0]})
    return torch.cat(conds)


@dataclass
class ScheduledPromptConditioning:
    end_at_step: int
    cond: Any  # (tokens, D), or a DictWithShape for families with more than one conditioning tensor


@dataclass
class ComposableScheduledPromptConditioning:
    schedules: list[ScheduledPromptConditioning]
    weight: float = 1.0


@dataclass
class MulticondLearnedConditioning:
    shape: tuple
    batch: list[list[ComposableScheduledPromptConditioning]]


class PromptEncoder:
    """Encodes prompt texts with one model's tokenizer and text encoder under the current settings."""

    def __init__(self, model: Any, *, clip_skip: int = 1, emphasis: str = "Original",
                 comma_padding_backtrack: int = 20, embeddings: Any = None, tokenizer: Any = None,
                 text_encoder: Any = None, embedding_part: str = ""):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.text_encoder = text_encoder if text_encoder is not None else model.text_encoder
        self.clip_skip = max(1, int(clip_skip))
        self.emphasis = emphasis
        self.comma_padding_backtrack = comma_padding_backtrack
        self.embeddings = embeddings
        self.embedding_part = embedding_part  # which part of a multi-encoder embedding this encoder takes
        self.ids = prompt_chunks.special_tokens(self.tokenizer)
        self.used_embeddings: dict[str, Any] = {}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def find_embedding(self, tokens: list[int], position: int):
        if self.embeddings is None:
            return None, 0
        return self.embeddings.find_embedding_at_position(tokens, position)

    def chunks(self, text: str) -> tuple[list[prompt_chunks.PromptChunk], int]:
        return prompt_chunks.tokenize_line(text, self.tokenize, self.ids, emphasis=self.emphasis,
                                           comma_padding_backtrack=self.comma_padding_backtrack,
                                           find_embedding=self.find_embedding)

    def encode(self, texts: list[str], negative: bool = False):
        """(len(texts), 77 * chunks, D). Texts with fewer chunks get empty chunks, as in A1111, and the
        emphasis normalisation of each chunk index spans all the texts encoded together. ``negative``: the texts are
        negative prompts (SD 1.x and 2.x encode them like any other; SDXL zeroes empty ones)."""
        import torch

        per_text = [self.chunks(text)[0] for text in texts]
        for chunks in per_text:
            for chunk in chunks:
                for fix in chunk.fixes:
                    self.used_embeddings[fix.embedding.name] = fix.embedding
        count = max(len(chunks) for chunks in per_text)
        empty = prompt_chunks.empty_chunk(self.ids)
        outputs = [self.encode_chunks([chunks[i] if i < len(chunks) else empty for chunks in per_text])
                   for i in range(count)]
        return torch.cat(outputs, dim=1)

    def encode_chunks(self, chunks: list[prompt_chunks.PromptChunk]):
        """One chunk per row -> (rows, 77, D) after clip skip and emphasis."""
        import torch

        model = self.model
        tokens = torch.tensor([chunk.tokens for chunk in chunks], device=model.device)
        if self.ids.pad != self.ids.end:  # families padding with a pad token: everything after the first EOS
            is_end = (tokens == self.ids.end).int()
            tokens = torch.where(is_end.cumsum(dim=1) - is_end >= 1, torch.full_like(tokens, self.ids.pad), tokens)
        fixes = [chunk.fixes for chunk in chunks]
        with torch.inference_mode(), _embedding_fixes(self.text_encoder, fixes, self.embedding_part):
            z = self.hidden_states(tokens)
            multipliers = torch.tensor([chunk.multipliers for chunk in chunks], device=z.device, dtype=torch.float32)
            z = sd_emphasis.get_current_option(self.emphasis)().after_transformers(z.float(), multipliers)
        return z.to(model.dtype)

    def hidden_states(self, tokens):
        """The text encoder's output for a batch of chunks: the last layer, or with clip skip N the N-th from
        the end, through the final layer norm (A1111's SD 1.x rule)."""
        if self.clip_skip <= 1:
            return self.text_encoder(input_ids=tokens).last_hidden_state
        out = self.text_encoder(input_ids=tokens, output_hidden_states=True)
        transformer = getattr(self.text_encoder, "text_model", self.text_encoder)  # the layout differs by version
        return transformer.final_layer_norm(out.hidden_states[-self.clip_skip])


@contextmanager
def _embedding_fixes(text_encoder: Any, fixes: list[list[prompt_chunks.PromptChunkFix]], part: str = ""):
    """Put textual-inversion vectors (``part`` of multi-encoder embeddings) in place of their placeholder tokens'
    input embeddings, through a forward hook on the token-embedding layer for the duration of one encode."""
    if not any(fixes):
        yield
        return

    def replace(module, inputs, output):
        output = output.clone()
        for row, row_fixes in enumerate(fixes):
            for fix in row_fixes:
                vectors = fix.embedding.vectors_for(part).to(device=output.device, dtype=output.dtype)
                start = fix.offset + 1  # after BOS
                count = min(vectors.shape[0], output.shape[1] - 1 - start)
                output[row, start:start + count] = vectors[:count]
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def get_learned_conditioning(encoder: PromptEncoder, prompts: list[str], steps: int, hires_steps: int | None = None,
                             use_old_scheduling: bool = False,
                             negative: bool = False) -> list[list[ScheduledPromptConditioning]]:
    """Per prompt, its schedule with encoded conditioning; each distinct prompt is encoded once. ``negative``:
    these are negative prompts."""
    schedules = prompt_parser.get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache: dict[str, list[ScheduledPromptConditioning]] = {}
    result = []
    for prompt, schedule in zip(prompts, schedules):
        if prompt not in cache:
            conds = split_rows(encoder.encode([text for _, text in schedule], negative=negative))
            cache[prompt] = [ScheduledPromptConditioning(end, cond) for (end, _), cond in zip(schedule, conds)]
        result.append(cache[prompt])
    return result


def get_multicond_learned_conditioning(encoder: PromptEncoder, prompts: list[str], steps: int,
                                       hires_steps: int | None = None,
                                       use_old_scheduling: bool = False) -> MulticondLearnedConditioning:
    """Like :func:`get_learned_conditioning`, with each prompt split on ``AND`` into weighted parts."""
    res_indexes, flat, _ = prompt_parser.get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(encoder, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[index], weight) for index, weight in indexes]
             for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _at_step(schedules: list[ScheduledPromptConditioning], step: int):
    return next((entry.cond for entry in schedules if step <= entry.end_at_step), schedules[-1].cond)


def schedule_key(multicond: MulticondLearnedConditioning, uncond: list[list[ScheduledPromptConditioning]],
                 step: int) -> tuple:
    """Which conditioning entries model call ``step`` uses: equal keys mean equal batches, so a run builds its
    context once per prompt-schedule segment instead of once per call."""
    chosen = [id(_at_step(composable.schedules, step)) for prompts in multicond.batch for composable in prompts]
    return tuple(chosen), tuple(id(_at_step(schedules, step)) for schedules in uncond)


def stack_conds(tensors: list):
    """Stack (tokens, D) tensors, padding shorter ones by repeating their last vector (dicts: key by key)."""
    import torch

    if isinstance(tensors[0], dict):
        return DictWithShape({key: stack_conds([t[key] for t in tensors]) for key in tensors[0]})
    length = max(t.shape[0] for t in tensors)
    padded = [t if t.shape[0] == length else torch.cat([t, t[-1:].repeat(length - t.shape[0], 1)]) for t in tensors]
    return torch.stack(padded)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step: int):
    """The (B, tokens, D) conditioning for 0-based model call ``current_step``."""
    return stack_conds([_at_step(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step: int):
    """(conds_list, tensor): for each image a list of (row in tensor, weight)."""
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds = []
        for composable in composable_prompts:
            conds.append((len(tensors), composable.weight))
            tensors.append(_at_step(composable.schedules, current_step))
        conds_list.append(conds)
    return conds_list, stack_conds(tensors)


def pad_to_length(tensor, length: int, empty):
    """Append copies of the empty-prompt chunk ``empty`` (77, D) until ``tensor`` (B, T, D) is ``length`` long
    (for a dict, its ``crossattn`` context)."""
    import torch

    if isinstance(tensor, dict):
        empty = empty["crossattn"] if isinstance(empty, dict) else empty
        return DictWithShape(tensor, crossattn=pad_to_length(tensor["crossattn"], length, empty))
    missing = (length - tensor.shape[1]) // empty.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, empty.to(tensor.dtype).unsqueeze(0).repeat(tensor.shape[0], missing, 1)], dim=1)
