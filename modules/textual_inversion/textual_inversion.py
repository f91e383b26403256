"""Textual-inversion embeddings: discovery, the three file formats, and lookup by token sequence.

Files under ``models/embeddings/`` (recursive) and ``--embeddings-dir``:
- A1111 ``.pt``: ``{"string_to_param": {"*": tensor(n, D)}, "name", "step", "sd_checkpoint", ...}``
- ``.safetensors``: one tensor, e.g. ``{"emb_params": tensor(n, D)}``
- diffusers ``learned_embeds.bin`` / ``.bin``: ``{"<token>": tensor(D)}``
- SDXL: ``{"clip_l": tensor(n, 768), "clip_g": tensor(n, 1280)}``, one part per text encoder
An embedding is used by its file stem. The directories are rescanned when a file is added, changed
or removed; embeddings that do not fit the loaded model's text encoders (the family's ``text_encoders`` layout and
their widths) are listed as skipped, with the reason.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from modules import errors, hashes
from modules.families.spec import family_of_context_width
from modules.loading import model_files
from modules.runtime import heavy_imports

EXTENSIONS = (".pt", ".bin", ".safetensors")


@dataclass
class Embedding:
    vec: Any  # float32 tensor (vectors, D) on the CPU; for a multi-part embedding its first part
    name: str
    filename: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    _hash: str | None = field(default=None, repr=False)
    parts: dict = field(default_factory=dict)  # SDXL: {"clip_l": (n, 768), "clip_g": (n, 1280)}; empty otherwise

    def vectors_for(self, part: str):
        """The vectors for the text encoder an embedding-file key names ("" for single-tensor layouts)."""
        return self.parts[part] if part else self.vec

    @property
    def shape(self) -> int:
        return int(self.vec.shape[-1])

    @property
    def vectors(self) -> int:
        return int(self.vec.shape[0])

    @property
    def hash(self) -> str | None:
        if self._hash is None and self.filename:
            self._hash = hashes.sha256(self.filename, f"textual_inversion/{self.name}")
        return self._hash

    @property
    def shorthash(self) -> str | None:
        return self.hash[:12] if self.hash else None


SDXL_PARTS = ("clip_l", "clip_g")


def vectors_from_data(data: Any, filename: str):
    """The (n, D) tensor of an embedding file's contents, whichever of the supported layouts it uses; for SDXL's
    layout a dict of one such tensor per part."""
    import torch

    if isinstance(data, dict) and all(part in data for part in SDXL_PARTS):
        parts = {part: _as_vectors(data[part], f"{filename} ({part})") for part in SDXL_PARTS}
        if len({tensor.shape[0] for tensor in parts.values()}) != 1:
            raise ValueError(f"{filename}: clip_l and clip_g hold different numbers of vectors")
        return parts
    if isinstance(data, dict) and "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ValueError(f"{filename}: string_to_param must hold exactly one tensor")
        tensor = next(iter(params.values()))
    elif isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):
        tensor = next(iter(data.values()))
    else:
        keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{filename}: not a textual-inversion embedding (contents: {keys})")
    return _as_vectors(tensor, filename)


def _as_vectors(tensor: Any, filename: str):
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{filename}: not a tensor")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise ValueError(f"{filename}: embedding tensor has shape {tuple(tensor.shape)}, expected (vectors, width)")
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def load_embedding_file(path: str) -> Embedding:
    name = os.path.splitext(os.path.basename(path))[0]
    fmt = model_files.detect_format(path)
    data = model_files.read_state_dict(path) if fmt == model_files.SAFETENSORS else model_files.load_pickle(path)
    vectors = vectors_from_data(data, os.path.basename(path))
    parts = vectors if isinstance(vectors, dict) else {}
    embedding = Embedding(parts[SDXL_PARTS[0]] if parts else vectors, name, filename=path, parts=parts)
    if isinstance(data, dict):
        step = data.get("step")
        embedding.step = int(step) if isinstance(step, (int, float)) else None
        for key in ("sd_checkpoint", "sd_checkpoint_name"):
            setattr(embedding, key, data.get(key) if isinstance(data.get(key), str) else None)
    return embedding


def _misfit(embedding: Embedding, layout: dict[str, int]) -> str | None:
    """Why ``embedding`` cannot be used with text encoders of ``layout`` (embedding-file key -> width), naming the
    family the embedding was made for; None if it can."""
    keys = set(layout)
    if embedding.parts:
        made_for = "an SDXL embedding (clip_l + clip_g)"
    else:
        made_for = f"an embedding for {family_of_context_width(embedding.shape)} (width {embedding.shape})"
    if keys == {""}:
        if embedding.parts:
            return f"{made_for}; this model has one text encoder"
        if embedding.shape != layout[""]:
            return f"{made_for}; this model's text encoder is {layout['']} wide"
        return None
    if not embedding.parts:
        return f"{made_for}; this model needs {' + '.join(layout)}"
    for part, width in layout.items():
        if part not in embedding.parts or embedding.parts[part].shape[1] != width:
            return f"{made_for}: its {part} part does not fit the model's {width}-wide encoder"
    return None


class EmbeddingLookup:
    """The embeddings usable with one tokenizer and one set of text encoders, and the token-sequence index.
    Each model gets its own lookup, so the UI's token counter never disturbs a running job."""

    def __init__(self, embeddings: dict[str, Embedding], tokenizer: Any = None, layout: dict[str, int] | None = None):
        self.tokenizer = tokenizer  # held so the id() keying this lookup cannot be reused by another tokenizer
        self.word_embeddings: dict[str, Embedding] = {}
        self.skipped_embeddings: dict[str, Embedding] = {}
        self.skip_reasons: dict[str, str] = {}
        self.ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
        for name, embedding in sorted(embeddings.items()):
            reason = _misfit(embedding, layout) if layout is not None else None
            if reason is not None:
                self.skipped_embeddings[name] = embedding
                self.skip_reasons[name] = reason
                continue
            self.word_embeddings[name] = embedding
            if tokenizer is not None:
                ids = tokenizer([name], truncation=False, add_special_tokens=False)["input_ids"][0]
                if ids:
                    self.ids_lookup.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self.ids_lookup.values():
            candidates.sort(key=lambda pair: len(pair[0]), reverse=True)

    def skipped_mentions(self, texts: list[str]) -> list[str]:
        """A warning for each skipped embedding whose name a prompt uses as a word (it stays plain text there)."""
        joined = "\n".join(texts)
        return [f"Embedding {name} skipped: {reason}" for name, reason in self.skip_reasons.items()
                if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", joined)]

    def find_embedding_at_position(self, tokens: list[int], offset: int) -> tuple[Embedding | None, int]:
        for ids, embedding in self.ids_lookup.get(tokens[offset], ()):
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, 0


class EmbeddingDatabase:
    """All embedding files found on disk (rescanned when any file changes), with a lookup per model."""

    def __init__(self) -> None:
        self.embedding_dirs: list[str] = []
        self.embeddings: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}  # file -> why it could not be read
        self.files_signature: tuple = ()
        self.scanned = False
        self._lookups: dict[tuple, EmbeddingLookup] = {}
        self._lock = threading.Lock()

    def set_dirs(self, dirs: list[str]) -> None:
        self.embedding_dirs = list(dict.fromkeys(os.path.abspath(d) for d in dirs))

    def load_textual_inversion_embeddings(self, force_reload: bool = False) -> None:
        """Reread the files if any was added, changed or removed."""
        with self._lock:
            files = model_files.list_files(self.embedding_dirs, EXTENSIONS)
            if self.scanned and not force_reload and files == self.files_signature:
                return
            embeddings, problems = {}, {}
            for path, _, _ in files:
                try:
                    embedding = load_embedding_file(path)
                except Exception as e:  # a broken file is listed, never fatal
                    problems[path] = str(e)
                    continue
                embeddings.setdefault(embedding.name, embedding)
            self.embeddings, self.errors, self.files_signature, self._lookups = embeddings, problems, files, {}
            self.scanned = True

    def lookup(self, tokenizer: Any = None, layout: dict[str, int] | None = None) -> EmbeddingLookup:
        """The embeddings for text encoders of ``layout`` (embedding-file key -> width; None: all of them, e.g.
        for counting tokens)."""
        key = (id(tokenizer), tuple(sorted(layout.items())) if layout is not None else None)
        with self._lock:
            if key not in self._lookups:
                self._lookups[key] = EmbeddingLookup(self.embeddings, tokenizer, layout)
            return self._lookups[key]


embedding_db = EmbeddingDatabase()


def embedding_dirs() -> list[str]:
    from modules import paths, shared

    dirs = [os.path.join(paths.models_path, "embeddings")]
    if getattr(shared.cmd_opts, "embeddings_dir", None):
        dirs.append(shared.cmd_opts.embeddings_dir)
    return dirs


def refresh_for_model(model: Any = None, tokenizer: Any = None, force_reload: bool = False,
                      rescan: bool = True) -> EmbeddingLookup:
    """The embeddings usable with ``model`` (or, without a model, all of them for ``tokenizer``), after
    rereading the folders if files changed (``rescan=False`` skips that, as ``do_not_reload_embeddings``)."""
    heavy_imports.ensure()  # called from request threads too (the API's list, the UI's token counter)
    embedding_db.set_dirs(embedding_dirs())
    if rescan or not embedding_db.scanned:
        try:
            embedding_db.load_textual_inversion_embeddings(force_reload)
        except OSError as e:
            errors.report(f"Could not scan embeddings: {e}")
    if model is None:
        return embedding_db.lookup(tokenizer)
    layout = {part: int(getattr(model, encoder).get_input_embeddings().weight.shape[1])
              for encoder, part in model.family.text_encoders}
    return embedding_db.lookup(model.tokenizer, layout)
