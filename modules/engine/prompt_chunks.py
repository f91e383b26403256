"""Weighted prompt text -> CLIP token chunks of 75 (A1111 ``sd_hijack_clip``), without torch.

Each chunk is later encoded as 77 tokens: BOS + 75 + EOS. ``BREAK`` closes a chunk; when a chunk
fills up and its last comma is at most ``comma_padding_backtrack`` tokens back, the words after that
comma move to the next chunk. Textual-inversion embeddings are found by their token sequence and
kept whole inside one chunk. Pure Python so the UI's token counter needs no model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import prompt_parser

CHUNK_LENGTH = 75


@dataclass
class PromptChunkFix:
    """Embedding vectors to place at ``offset`` (counted within the 75 tokens, before BOS is added)."""
    offset: int
    embedding: Any


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[PromptChunkFix] = field(default_factory=list)


@dataclass(frozen=True)
class SpecialTokens:
    start: int
    end: int
    pad: int
    comma: int


def special_tokens(tokenizer) -> SpecialTokens:
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # one lookup; get_vocab() copies the 49k-entry vocabulary
    return SpecialTokens(start=tokenizer.bos_token_id, end=tokenizer.eos_token_id,
                         pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                         comma=comma if comma is not None and comma != tokenizer.unk_token_id else -1)


# (tokens, position) -> (embedding, tokens it spans) or (None, 0)
EmbeddingFinder = Callable[[list[int], int], tuple[Any, int]]


def no_embeddings(tokens: list[int], position: int) -> tuple[Any, int]:
    return None, 0


def tokenize_line(line: str, tokenize: Callable[[list[str]], list[list[int]]], ids: SpecialTokens, *,
                  emphasis: str = "Original", comma_padding_backtrack: int = 20,
                  find_embedding: EmbeddingFinder = no_embeddings) -> tuple[list[PromptChunk], int]:
    """Split one scheduled prompt text into chunks of BOS + 75 + EOS. Returns (chunks, token count),
    where the count includes the padding of chunks closed early (A1111's counter semantics)."""
    parsed = prompt_parser.parse_prompt_attention(line) if emphasis != "None" else [[line, 1.0]]
    tokenized = tokenize([text for text, _ in parsed])
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal token_count, last_comma, chunk
        token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens = [ids.start] + chunk.tokens + [ids.end] * padding + [ids.end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * padding + [1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for tokens, (text, weight) in zip(tokenized, parsed):
        if (text, weight) == prompt_parser.BREAK_MARKER:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == ids.comma:
                last_comma = len(chunk.tokens)
            elif (comma_padding_backtrack and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= comma_padding_backtrack):
                moved = last_comma + 1
                moved_tokens, moved_multipliers = chunk.tokens[moved:], chunk.multipliers[moved:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:moved], chunk.multipliers[:moved]
                next_chunk()
                chunk.tokens, chunk.multipliers = moved_tokens, moved_multipliers
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            embedding, span = find_embedding(tokens, position)
            if embedding is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            vectors = int(embedding.vectors)
            if len(chunk.tokens) + vectors > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append(PromptChunkFix(len(chunk.tokens), embedding))
            chunk.tokens += [0] * vectors
            chunk.multipliers += [weight] * vectors
            position += span
    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def empty_chunk(ids: SpecialTokens) -> PromptChunk:
    return PromptChunk([ids.start] + [ids.end] * (CHUNK_LENGTH + 1), [1.0] * (CHUNK_LENGTH + 2))


def target_token_count(count: int) -> int:
    """The counter's limit: the next multiple of 75 (at least 75)."""
    return math.ceil(max(count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


def prompt_token_count(prompt: str, steps: int, tokenize, ids: SpecialTokens, *, is_positive: bool = True,
                       emphasis: str = "Original", comma_padding_backtrack: int = 20,
                       find_embedding: EmbeddingFinder = no_embeddings) -> tuple[int, int]:
    """(count, limit) for the UI counter: the longest scheduled text of any AND part, extra-network
    tags and comments removed first."""
    from modules import extra_networks

    text, _ = extra_networks.parse_prompt(prompt_parser.strip_comments(prompt))
    texts = prompt_parser.get_multicond_prompt_list([text])[1] if is_positive else [text]
    schedules = prompt_parser.get_learned_conditioning_prompt_schedules(texts, steps)
    counts = [tokenize_line(scheduled, tokenize, ids, emphasis=emphasis, comma_padding_backtrack=comma_padding_backtrack,
                            find_embedding=find_embedding)[1]
              for schedule in schedules for _, scheduled in schedule]
    count = max(counts)
    return count, target_token_count(count)


def token_counter(text: str, steps: int, is_positive: bool = True, styles: list[str] | None = None) -> tuple[int, int]:
    """(count, limit) for a prompt box, using the loaded model's tokenizer or, before any model is
    loaded, the bundled one; known embeddings count as their vector count."""
    from modules import script_callbacks, sd_models
    from modules.loading import model_loader
    from modules.shared import opts
    from modules.textual_inversion import textual_inversion

    params = script_callbacks.BeforeTokenCounterParams(text, steps, list(styles or []), is_positive)
    script_callbacks.before_token_counter_callback(params)
    model = sd_models.current_model()
    tokenizer = model.tokenizer if model is not None else model_loader.bundled_tokenizer()
    embeddings = textual_inversion.refresh_for_model(model, tokenizer, rescan=False)  # no folder walk per keystroke

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    return prompt_token_count(params.prompt, max(1, int(params.steps or 1)), tokenize, special_tokens(tokenizer),
                              is_positive=params.is_positive, emphasis=opts.emphasis,
                              comma_padding_backtrack=opts.comma_padding_backtrack,
                              find_embedding=embeddings.find_embedding_at_position)
