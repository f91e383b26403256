"""Rebuild the bundled CLIP tokenizer files from the original BPE merges list.

Run once by a maintainer: ``python -m modules.configs.make_clip_tokenizer bpe_simple_vocab_16e6.txt.gz``.
The vocabulary is 256 byte symbols, the same 256 with ``</w>``, one token per merge
(the first 48894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``: 49408 entries.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

MERGE_COUNT = 49152 - 256 - 2
OUT_DIR = Path(__file__).parent / "clip_tokenizer"


def byte_symbols() -> list[str]:
    """The stand-in characters for the 256 byte values, in vocabulary order (GPT-2 / CLIP convention):
    bytes that are printable Latin-1 characters stand for themselves and come first; the other bytes
    follow in byte order, mapped to code points from 256 upwards."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def build(bpe_gz: Path, out_dir: Path = OUT_DIR) -> None:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + MERGE_COUNT]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2) + "\n", encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "add_prefix_space": False, "errors": "replace"}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
