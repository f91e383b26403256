"""Hypernetworks (A1111's ``.pt`` files in ``models/hypernetworks``): small residual MLPs that transform an
attention layer's key and value context before its ``to_k`` / ``to_v`` projections.

The file is A1111's: a dict whose int keys are context widths (320, 640, 768, 1280 for SD 1.x) mapping to two
state dicts (key, value) of a ``linear`` ``Sequential``, plus ``layer_structure`` ([1, 2, 1]), ``activation_func``,
``is_layer_norm``, ``use_dropout`` / ``dropout_structure``, ``last_layer_dropout``, ``activate_output``, ``name``,
``step``. It is read with ``torch.load(weights_only=True)``; a file that needs more is refused with a message.

Applied as A1111 does: every attention layer of the UNet whose context width the network has (cross-attention:
the text width; self-attention: the layer's own width) gets ``context + mlp(context) * strength`` for its key and
its value, networks in the order the prompt names them. Forward pre-hooks on ``to_k``/``to_v`` do it, so any
attention processor works; they are removed after the job.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from modules import hashes
from modules.errors import UserInputError
from modules.loading import model_files

log = logging.getLogger("webui")
HOOKS_KEY = "hypernetwork_hooks"  # in SDModel.extra: the hooks of the job's hypernetworks


def folders() -> list[str]:
    from modules import paths, shared

    found = [os.path.join(paths.models_path, "hypernetworks")]
    if getattr(shared.cmd_opts, "hypernetwork_dir", None):
        found.append(os.path.abspath(shared.cmd_opts.hypernetwork_dir))
    return found


def list_hypernetworks() -> dict[str, str]:
    """name (the file's stem) -> path, for every ``.pt`` under the hypernetwork folders, as A1111 lists them."""
    found: dict[str, str] = {}
    for folder in folders():
        for path in sorted(glob.iglob(os.path.join(folder, "**", "*.pt"), recursive=True), key=str.lower):
            name = os.path.splitext(os.path.basename(path))[0]
            if name != "None":
                found.setdefault(name, path)
    return found


def _activation(name: str | None) -> Any:
    import torch

    if name in (None, "linear"):
        return None
    if name == "swish":
        return torch.nn.Hardswish  # A1111's name for it
    classes = {cls.__name__.lower(): cls for cls in vars(torch.nn.modules.activation).values()
               if isinstance(cls, type) and issubclass(cls, torch.nn.Module)}
    if name not in classes:
        raise UserInputError(f"hypernetwork: unsupported activation function {name!r}")
    return classes[name]


def dropout_structure(layer_structure: list, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's default dropout per layer when the file gives none (0.3 in the hidden layers when used)."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    return [0.0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0.0, 0.0]


def build_mlp(dim: int, layer_structure: list, activation: str | None, layer_norm: bool, activate_output: bool,
              dropouts: list[float]) -> Any:
    """The ``linear`` Sequential in A1111's module order (so its state dict's indices match): per layer a Linear, the
    activation (not after the last layer unless ``activate_output``), a LayerNorm, a Dropout."""
    import torch

    if not layer_structure or layer_structure[0] != 1 or layer_structure[-1] != 1:
        raise UserInputError(f"hypernetwork: layer structure {layer_structure} must start and end with 1")
    activation_class = _activation(activation)
    layers = []
    for i in range(len(layer_structure) - 1):
        width_in, width_out = int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])
        layers.append(torch.nn.Linear(width_in, width_out))
        if activation_class is not None and (i < len(layer_structure) - 2 or activate_output):
            layers.append(activation_class())
        if layer_norm:
            layers.append(torch.nn.LayerNorm(width_out))
        if dropouts[i + 1] > 0:
            layers.append(torch.nn.Dropout(p=dropouts[i + 1]))
    return torch.nn.Sequential(*layers)


@dataclass
class Hypernetwork:
    name: str
    filename: str
    layers: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # context width -> (key MLP, value MLP)
    step: int = 0

    @property
    def shorthash(self) -> str | None:
        digest = hashes.sha256(self.filename, f"hypernet/{self.name}")
        return digest[:10] if digest else None


def load(name: str, path: str) -> Hypernetwork:
    state = model_files.load_pickle(path)  # torch.load(weights_only=True): anything else is refused, with a message
    if not isinstance(state, dict) or not any(isinstance(key, int) for key in state):
        raise UserInputError(f"hypernetwork {name}: {os.path.basename(path)} has no layers (not a hypernetwork file)")
    structure = list(state.get("layer_structure") or [1, 2, 1])
    dropouts = state.get("dropout_structure")
    use_dropout = bool(dropouts and any(dropouts)) or bool(state.get("use_dropout", False))
    if not dropouts:
        dropouts = dropout_structure(structure, use_dropout, bool(state.get("last_layer_dropout", False)))
    network = Hypernetwork(str(state.get("name") or name), path, step=int(state.get("step") or 0))
    for width, pair in state.items():
        if not isinstance(width, int):
            continue
        mlps = []
        for weights in pair:
            mlp = build_mlp(width, structure, state.get("activation_func"), bool(state.get("is_layer_norm", False)),
                            bool(state.get("activate_output", True)), list(dropouts))
            renamed = {_old_key(key): value for key, value in weights.items()}
            try:
                mlp.load_state_dict({key.removeprefix("linear."): value for key, value in renamed.items()})
            except RuntimeError as e:
                raise UserInputError(f"hypernetwork {name}: layers of width {width} do not match its layer structure "
                                     f"{structure} ({str(e).splitlines()[0][:200]})") from None
            mlps.append(mlp.eval().requires_grad_(False))
        network.layers[width] = (mlps[0], mlps[1])
    return network


def _old_key(key: str) -> str:
    """The first hypernetworks named their two layers ``linear1``/``linear2``."""
    return {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
            "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}.get(key, key)


def _transform(networks: list[tuple[Hypernetwork, float]], which: int):
    def hook(module, args):
        context = args[0]
        width = context.shape[-1]
        out = context
        for network, strength in networks:
            mlps = network.layers.get(width)
            if mlps is not None:
                x = out.float()
                out = (x + mlps[which](x) * strength).to(context.dtype)
        return (out, *args[1:])

    return hook


def apply(unet: Any, networks: list[tuple[Hypernetwork, float]], device: Any) -> list:
    """Hook ``networks`` (with their strengths) onto every attention layer of ``unet``; returns the hook handles."""
    from diffusers.models.attention_processor import Attention

    for network, _ in networks:
        for mlps in network.layers.values():
            for mlp in mlps:
                mlp.to(device=device, dtype=_float32())
    widths = {width for network, _ in networks for width in network.layers}
    handles = []
    for module in unet.modules():
        if isinstance(module, Attention) and module.to_k.in_features in widths:
            handles.append(module.to_k.register_forward_pre_hook(_transform(networks, 0)))
            handles.append(module.to_v.register_forward_pre_hook(_transform(networks, 1)))
    return handles


def _float32() -> Any:
    import torch

    return torch.float32
