"""Random-weight upscaler and face-restoration models saved in their official file layouts."""
from __future__ import annotations

import os
import re


def _save(state: dict, path: str, wrapper: str | None) -> str:
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save({wrapper: state} if wrapper else state, path)
    return path


def _randomized(model, seed: int, scale: float = 1.0):
    """Weights drawn with a fixed seed (so outputs are far from trivial but reproducible)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            std = 0.05 if param.ndim == 1 else scale / param[0].numel() ** 0.5
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def rrdbnet(blocks: int = 1, features: int = 8, growth: int = 4, upsamples: int = 2, unshuffle: int = 1, seed: int = 0):
    from modules.arch import esrgan as esrgan_arch

    return _randomized(esrgan_arch.RRDBNet(3, 3, features, blocks, growth, upsamples, unshuffle), seed).eval()


def to_original_esrgan_layout(state: dict, blocks: int, upsamples: int) -> dict:
    """basicsr RRDBNet keys -> the original ESRGAN (``model.N``) keys."""
    renamed = {"conv_first": "model.0", "conv_body": f"model.1.sub.{blocks}", "conv_hr": f"model.{3 * upsamples + 2}",
               "conv_last": f"model.{3 * upsamples + 4}"}
    renamed.update({f"conv_up{i + 1}": f"model.{3 * (i + 1)}" for i in range(upsamples)})
    converted = {}
    for key, value in state.items():
        match = re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$", key)
        if match:
            block, rdb, conv, kind = match.groups()
            converted[f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0.{kind}"] = value
        else:
            prefix, _, kind = key.rpartition(".")
            converted[f"{renamed[prefix]}.{kind}"] = value
    return converted


def write_rrdbnet(path: str, layout: str = "basicsr", **kwargs):
    """An RRDBNet saved as basicsr (``params_ema``) or in the original ESRGAN layout. Returns the network."""
    model = rrdbnet(**kwargs)
    state = model.state_dict()
    if layout == "esrgan":
        _save(to_original_esrgan_layout(state, kwargs.get("blocks", 1), kwargs.get("upsamples", 2)), path, None)
    else:
        _save(state, path, "params_ema")
    return model


def write_srvgg(path: str, features: int = 8, convs: int = 2, scale: int = 4, seed: int = 0):
    """An SRVGGNetCompact saved as realesr-general-x4v3 is (``params``). Returns the network."""
    from modules.arch import esrgan as esrgan_arch

    model = _randomized(esrgan_arch.SRVGGNetCompact(3, 3, features, convs, scale), seed).eval()
    _save(model.state_dict(), path, "params")
    return model


def codeformer(seed: int = 0):
    import torch

    from modules.arch import codeformer as codeformer_arch

    torch.manual_seed(seed)
    return codeformer_arch.CodeFormer(nf=32, ch_mult=(1, 1, 1, 1, 1, 1), emb_dim=32, codebook_size=16, dim_embd=64,
                                      n_head=1, n_layers=1, dim_mlp=64).eval()


def write_codeformer(path: str, seed: int = 0):
    model = codeformer(seed)
    _save(model.state_dict(), path, "params_ema")
    return model


def gfpgan(seed: int = 0):
    import torch

    from modules.arch import gfpgan as gfpgan_arch

    torch.manual_seed(seed)
    unet = {2 ** level: 4 for level in range(2, 10)}
    decoder = {2 ** level: 8 for level in range(2, 10)}
    model = gfpgan_arch.GFPGAN(unet, decoder, style_dim=16)
    with torch.no_grad():
        for i in range(15):
            getattr(model.stylegan_decoder.noises, f"noise{i}").normal_()
    return model.eval()


def write_gfpgan(path: str, seed: int = 0):
    model = gfpgan(seed)
    _save(model.state_dict(), path, "params_ema")
    return model


def write_interrogator(folder: str, terms: dict[str, list[str]], seed: int = 0) -> None:
    """Tiny random-weight BLIP captioner and CLIP model saved as transformers folders (``folder/blip``,
    ``folder/clip``), plus term lists, in the layout ``modules.interrogate`` reads."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer)

    from modules import paths

    torch.manual_seed(seed)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog", "red", "blue"]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(words)}, bos_token="[DEC]")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    blip_config = BlipConfig(text_config=dict(vocab_size=len(words), bos_token_id=5, sep_token_id=3, pad_token_id=0,
                                              eos_token_id=3, encoder_hidden_size=32, **small),
                             vision_config=dict(image_size=32, patch_size=16, **small), projection_dim=32)
    blip = BlipForConditionalGeneration(blip_config)
    blip.save_pretrained(os.path.join(folder, "blip"))
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(os.path.join(folder, "blip"))
    clip_tokenizer = CLIPTokenizer.from_pretrained(os.path.join(paths.configs_path, "clip_tokenizer"))
    clip_config = CLIPConfig(text_config=dict(vocab_size=len(clip_tokenizer), max_position_embeddings=77, **small),
                             vision_config=dict(image_size=32, patch_size=16, **small), projection_dim=16)
    CLIPModel(clip_config).save_pretrained(os.path.join(folder, "clip"))
    CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  clip_tokenizer).save_pretrained(os.path.join(folder, "clip"))
    for name, lines in terms.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(lines) + "\n")
