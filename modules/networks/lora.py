"""LoRA networks: discovery in ``models/Lora``, the common file layouts, and merging.

Layouts read, with the component prefixes the model's family declares (``ModelFamily.lora_layout``; SD 1.x's are
shown):
- kohya / A1111: ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` and
  ``lora_te_<module>...``, with LoCon's ``lora_mid`` for convolutions;
- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B`` (or ``.lora.down``/``.lora.up``);
- LyCORIS LoHa (``hada_w1_a`` ...), LoKr (``lokr_w1`` ...) and full ``diff`` weights.

The weights are merged into the model for a job (``weight += multiplier * scale * delta``) and the
original tensors are copied back afterwards, so a sampling step costs exactly what it costs without
LoRA and the model is bit-identical after the job. A network is merged whole or not at all: one trained for
another family (told by its context width and text-encoder prefixes) or with any layer that does not fit is
skipped with a warning.
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from modules import errors, hashes
from modules.families.spec import family_of_context_width
from modules.loading import model_files
from modules.runtime import worker_context

EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin")
_PART_SUFFIXES = (
    "lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a",
    "hada_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "diff",
)
_TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")  # kohya: SD 1.x/2.x, then SDXL's CLIP-L and bigG
_PEFT_PARTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
               "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight"}


@dataclass
class NetworkOnDisk:
    name: str
    filename: str
    metadata: dict = field(default_factory=dict)
    _hash: str | None = field(default=None, repr=False)

    @property
    def alias(self) -> str:
        return self.metadata.get("ss_output_name") or self.name

    @property
    def hash(self) -> str:
        """A1111's LoRA hash: sha256 of the tensor data after a safetensors header ("addnet" hash), or
        of the whole file for other formats; a ``sshs_model_hash`` in the metadata wins."""
        if self._hash is None:
            self._hash = self.metadata.get("sshs_model_hash") or lora_file_hash(self.filename, self.name)
        return self._hash

    @property
    def shorthash(self) -> str:
        return self.hash[:12]


def addnet_hash_safetensors(filename: str) -> str:
    digest = hashlib.sha256()
    with open(filename, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header_len)
        for block in iter(lambda: f.read(hashes.CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_file_hash(filename: str, name: str) -> str:
    if model_files.detect_format(filename) != model_files.SAFETENSORS:
        return hashes.sha256(filename, f"lora/{name}")
    title = f"lora-addnet/{name}"
    cached = hashes.sha256_from_cache(filename, title)
    return cached or hashes.store_in_cache(filename, title, addnet_hash_safetensors(filename))


class NetworkRegistry:
    """The LoRA files on disk, rescanned when the directory contents change."""

    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.available: dict[str, NetworkOnDisk] = {}
        self.aliases: dict[str, NetworkOnDisk] = {}
        self._signature: tuple = ()
        self._lock = threading.Lock()

    def refresh(self, dirs: list[str], force: bool = False) -> None:
        with self._lock:
            files = model_files.list_files(dirs, EXTENSIONS)
            if not force and files == self._signature and dirs == self.dirs:
                return
            available: dict[str, NetworkOnDisk] = {}
            aliases: dict[str, NetworkOnDisk] = {}
            for path, _, _ in files:
                name = os.path.splitext(os.path.basename(path))[0]
                if name in available:
                    continue  # the first file of a name wins, as for checkpoints
                network = available[name] = NetworkOnDisk(name, path, _read_metadata(path))
                aliases.setdefault(network.alias, network)
            # swapped in whole, so a job looking a name up meanwhile never sees a half-filled table
            self.dirs, self._signature, self.available, self.aliases = list(dirs), files, available, aliases

    def find(self, name: str) -> NetworkOnDisk | None:
        return self.available.get(name) or self.aliases.get(name)


def _read_metadata(path: str) -> dict:
    try:
        if model_files.detect_format(path) == model_files.SAFETENSORS:
            metadata = model_files.read_safetensors_header(path).get("__metadata__") or {}
            return {k: v for k, v in metadata.items() if isinstance(v, str)}
    except Exception as e:
        errors.report(f"Could not read LoRA metadata of {path}: {e}")
    return {}


registry = NetworkRegistry()


def lora_dirs() -> list[str]:
    from modules import paths, shared

    dirs = [os.path.join(paths.models_path, "Lora"), os.path.join(paths.models_path, "LyCORIS")]
    if getattr(shared.cmd_opts, "lora_dir", None):
        dirs.append(os.path.abspath(shared.cmd_opts.lora_dir))
    return dirs


def list_available_networks(force: bool = False) -> dict[str, NetworkOnDisk]:
    registry.refresh(lora_dirs(), force)
    return registry.available


# --- reading a file into per-module weight groups ----------------------------------------------

def _split_key(key: str, layout: tuple) -> tuple[str, str] | None:
    """``lora_unet_x.lora_down.weight`` -> (``lora_unet_x``, ``lora_down.weight``); PEFT/diffusers keys are
    renamed to the kohya form. None for keys that carry no weights we use."""
    for peft, part in _PEFT_PARTS.items():
        if key.endswith("." + peft):
            module = key[: -len(peft) - 1].replace(".processor.", ".")
            for suffix in ("_lora",):  # old diffusers attention-processor names: to_q_lora
                module = module[: -len(suffix)] if module.endswith(suffix) else module
            for component in layout:
                if module.startswith(component.peft_prefix):
                    return component.kohya_prefix + module[len(component.peft_prefix):].replace(".", "_"), part
            return layout[0].kohya_prefix + module.replace(".", "_"), part  # bare keys address the denoiser
    for part in _PART_SUFFIXES:
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    return None


def load_network_weights(filename: str, layout: tuple) -> dict[str, dict[str, Any]]:
    """The file's weights grouped by kohya module key, for a model family's ``lora_layout``."""
    with model_files.loading(filename, "LoRA"):
        state = model_files.read_state_dict(filename)
    groups: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        split = _split_key(key, layout)
        if split:
            groups.setdefault(split[0], {})[split[1]] = tensor
    return groups


def ldm_unet_names(model: Any) -> dict[str, str]:
    """diffusers UNet module name -> its name in the original LDM layout, which kohya's SDXL LoRA files (and
    A1111's own compvis-style names) use. Derived once per model by running diffusers' own key conversion over
    values tagged with their LDM key."""
    cached = model.extra.get("ldm_unet_names")
    if cached is not None:
        return cached
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from modules.families import sd1_layout

    keys = sorted(sd1_layout.unet_shapes(sd1_layout.unet_arch_from_config(model.unet.config)))
    tagged = {key: torch.tensor(float(index)) for index, key in enumerate(keys)}
    names = {}
    for key, tag in convert_ldm_unet_checkpoint(dict(tagged), dict(model.unet.config)).items():
        names[key.rpartition(".")[0]] = keys[int(tag.item())][len(sd1_layout.UNET):].rpartition(".")[0]
    model.extra["ldm_unet_names"] = names
    return names


def module_lookup(model: Any) -> dict[str, Any]:
    """kohya key -> torch module, for every Linear/Conv2d of the components the family's LoRA layout names; the
    denoiser's modules also answer to their LDM names."""
    import torch

    lookup: dict[str, Any] = {}
    for component in model.family.lora_layout:
        prefix = component.kohya_prefix
        ldm_names = ldm_unet_names(model) if component.component == "unet" else {}
        for name, module in getattr(model, component.component).named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                key = name.replace(".", "_")
                lookup[prefix + key] = module
                if name in ldm_names:
                    lookup[prefix + ldm_names[name].replace(".", "_")] = module
                if component.text_encoder and not name.startswith("text_model."):
                    lookup[prefix + "text_model_" + key] = module  # kohya names keep the text_model level
    return lookup


def context_width(groups: dict[str, dict[str, Any]]) -> int | None:
    """The text-conditioning width a network was trained for: the input width of a cross-attention key or value
    projection (768 SD 1.x, 1024 SD 2.x, 2048 SDXL); None when it changes none."""
    for key, parts in groups.items():
        if key.endswith(("attn2_to_k", "attn2_to_v")):
            for part in ("lora_down.weight", "hada_w1_b", "diff"):
                if part in parts and parts[part].dim() >= 2:
                    return int(parts[part].shape[1])
    return None


def foreign_family(groups: dict[str, dict[str, Any]], model: Any) -> str | None:
    """The family a network was trained for when it is not ``model``'s, as a phrase for the warning; None when
    nothing says it is foreign."""
    width = context_width(groups)
    text_prefixes = {prefix for prefix in _TEXT_PREFIXES for key in groups if key.startswith(prefix)}
    model_prefixes = {component.kohya_prefix for component in model.family.lora_layout}
    if width is not None and width != model.unet.config.cross_attention_dim:
        return family_of_context_width(width)
    if not text_prefixes <= model_prefixes:
        return "SDXL" if text_prefixes & {"lora_te1_", "lora_te2_"} else "SD 1.x/2.x"
    return None


def _shape_only(parts: dict[str, Any]) -> dict[str, Any]:
    """The weights on the meta device (``alpha`` stays a value): computing a delta from them checks the shapes
    without doing the arithmetic."""
    return {name: tensor if name == "alpha" else tensor.to("meta") for name, tensor in parts.items()}


def compute_delta(parts: dict[str, Any], shape: tuple[int, ...]):
    """The weight difference of one module (before the user multiplier), float32, shaped like the weight."""
    import torch

    f = {k: v.float() for k, v in parts.items()}
    alpha = float(f["alpha"]) if "alpha" in f else None
    if "lora_up.weight" in f and "lora_down.weight" in f:
        up, down = f["lora_up.weight"], f["lora_down.weight"]
        rank = down.shape[0]
        if "lora_mid.weight" in f:
            delta = torch.einsum("ijkl,jr,ip->prkl", f["lora_mid.weight"], down.flatten(1), up.flatten(1))
        else:
            delta = up.flatten(1) @ down.flatten(1)
    elif "hada_w1_a" in f:
        rank = f["hada_w1_b"].shape[0]
        delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    elif "lokr_w1" in f or "lokr_w1_a" in f:
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
        if len(shape) == 4 and shape[2:] != (1, 1) and w2.dim() != 4:
            raise ValueError("LoKr with a decomposed convolution factor is not supported")
        if w2.dim() == 4:
            w1 = w1.reshape(*w1.shape, 1, 1)
        rank = f["lokr_w1_b"].shape[0] if "lokr_w1_b" in f else f["lokr_w2_b"].shape[0] if "lokr_w2_b" in f else None
        delta = torch.kron(w1, w2)
    elif "diff" in f:
        rank, alpha, delta = None, None, f["diff"]
    else:
        raise ValueError(f"unrecognised weights {sorted(parts)}")
    if delta.numel() != int(torch.Size(shape).numel()):
        raise ValueError(f"weights of shape {tuple(delta.shape)} do not fit a layer of shape {shape}")
    scale = alpha / rank if alpha is not None and rank else 1.0
    return delta.reshape(shape) * scale


@dataclass
class LoadedNetwork:
    network: NetworkOnDisk
    te_multiplier: float
    unet_multiplier: float
    mentioned_name: str


class AppliedNetworks:
    """The networks merged into a model, and the original weights to restore afterwards."""

    def __init__(self) -> None:
        self.model: Any = None
        self.loaded: list[LoadedNetwork] = []
        self._backup: dict[Any, Any] = {}

    def apply(self, model: Any, networks: list[LoadedNetwork]) -> list[str]:
        """Restore, then merge ``networks`` into ``model``. Returns warnings (layers that did not fit)."""
        import torch

        self.restore()
        warnings: list[str] = []
        if not networks:
            return warnings
        lookup = module_lookup(model)
        layout = model.family.lora_layout
        text_prefixes = tuple(component.kohya_prefix for component in layout if component.text_encoder)
        self.model = model
        with torch.no_grad():
            for loaded in networks:
                groups = load_network_weights(loaded.network.filename, layout)
                family = foreign_family(groups, model)
                if family is not None:
                    warnings.append(f"LoRA {loaded.mentioned_name} is for {family}, not for this {model.family.label} "
                                    "model: skipped")
                    continue
                merges, unmatched, failed = [], 0, []
                for key, parts in groups.items():
                    module = lookup.get(key)
                    if module is None:
                        unmatched += 1
                        continue
                    multiplier = loaded.te_multiplier if key.startswith(text_prefixes) else loaded.unet_multiplier
                    try:
                        compute_delta(_shape_only(parts), tuple(module.weight.shape))
                    except (ValueError, RuntimeError, KeyError) as e:
                        failed.append(f"{key}: {e}")
                        continue
                    if multiplier != 0:
                        merges.append((module, parts, multiplier))
                if failed:
                    warnings.append(f"LoRA {loaded.mentioned_name}: {len(failed)} layers do not fit this model "
                                    f"({failed[0]}): skipped")
                    continue
                if unmatched:
                    warnings.append(f"LoRA {loaded.mentioned_name}: {unmatched} weight groups match no layer of this model")
                for module, parts, multiplier in merges:
                    delta = compute_delta(parts, tuple(module.weight.shape))
                    if module not in self._backup:
                        self._backup[module] = module.weight.detach().clone()
                    merged = module.weight.float() + delta.to(module.weight.device) * multiplier
                    module.weight.copy_(merged.to(module.weight.dtype))
        self.loaded = list(networks)
        return warnings

    def restore(self) -> None:
        """Copy the original weights back: the model is bit-identical to before ``apply``."""
        import torch

        with torch.no_grad():
            for module, weight in self._backup.items():
                module.weight.copy_(weight)
        self._backup.clear()
        self.loaded = []
        self.model = None


_applied: dict[int, AppliedNetworks] = {}  # by queue worker: with --gpus each worker's model has its own


def applied_networks() -> AppliedNetworks:
    """The networks merged by the job running on this thread's queue worker (the first worker's elsewhere)."""
    slot = worker_context.slot()
    found = _applied.get(slot)
    if found is None:
        found = _applied.setdefault(slot, AppliedNetworks())
    return found
