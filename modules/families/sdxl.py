"""SDXL base (CLIP-L and OpenCLIP ViT-bigG text encoders) and the SDXL refiner (bigG only): their single-file
layout (the SGM code's: LDM UNet and VAE names, text encoders under ``conditioner.embedders.N.``), its sizes, the
base model's loader and its conditioner as A1111 computes it.

SDXL base, SDXL inpainting and the refiner load from single files and diffusers folders; the conditioner is proven against
diffusers' ``StableDiffusionXLPipeline``; jobs condition on each pass's size and the crop settings; kohya's SDXL
LoRA names and ``clip_l``/``clip_g`` embeddings work. The refiner (bigG alone, aesthetic scores) loads as a
checkpoint of its own, as ``refiner_checkpoint`` and as the hires checkpoint, where ``engine.sampling.RefinerSwitch`` continues a sampling
run on it. InstructPix2Pix is recognised and refused.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from modules.engine import conditioning
from modules.families import open_clip, sd1, sd1_layout, sd2
from modules.families.spec import LatentFormat, LoraLayout, ModelFamily, OfficialCheckpoint
from modules.loading import model_files
from modules.loading.model_loader import Components, build_module, load_tokenizer

CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
BIG_G_PREFIX = "conditioner.embedders.1.model."
REFINER_G_PREFIX = "conditioner.embedders.0.model."
LABEL_EMB = sd1_layout.UNET + "label_emb.0.0.weight"


def _has(shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _base_in_channels(shapes) -> int | None:
    """The UNet's input channels of an SDXL base-family checkpoint (two text encoders), else None."""
    if not _has(shapes, BIG_G_PREFIX):
        return None
    return shapes.get(sd1_layout.UNET + "input_blocks.0.0.weight", (0, 4))[1]


def _base_diffusers(unet) -> bool:
    return unet.get("addition_embed_type") == "text_time" and (
        "text_encoder" in unet.get("_subfolders", ()) or unet.get("cross_attention_dim") == 2048)


def checkpoint_shapes(unet: sd1_layout.UNetArch, vae: sd1_layout.VAEArch, big_g: open_clip.OpenClipArch,
                      clip_l: sd1_layout.TextArch | None = None) -> dict:
    """Every key and shape of an SDXL single-file checkpoint: base and inpainting with ``clip_l``, the refiner
    (bigG as embedder 0) without."""
    shapes = {**sd1_layout.unet_shapes(unet), **sd1_layout.vae_shapes(vae)}
    if clip_l is None:
        return {**shapes, **open_clip.checkpoint_shapes(big_g, REFINER_G_PREFIX)}
    return {**shapes, **sd1_layout.text_shapes(clip_l, CLIP_L_PREFIX), **open_clip.checkpoint_shapes(big_g, BIG_G_PREFIX)}


FULL_SIZE_BASE = (
    sd1_layout.UNetArch(model_channels=320, channel_mult=(1, 2, 4), attention_levels=(False, True, True),
                        context_dim=2048, linear_projection=True, head_channels=64, level_depths=(0, 2, 10),
                        middle_depth=10, adm_in_channels=2816),
    sd1_layout.VAEArch(), open_clip.OpenClipArch(width=1280, layers=32, projection_dim=1280), sd1_layout.TextArch())
FULL_SIZE_REFINER = (
    sd1_layout.UNetArch(model_channels=384, channel_mult=(1, 2, 4, 4), attention_levels=(False, True, True, False),
                        context_dim=1280, transformer_depth=4, linear_projection=True, head_channels=64,
                        adm_in_channels=2560),
    sd1_layout.VAEArch(), open_clip.OpenClipArch(width=1280, layers=32, projection_dim=1280))
# the tests' random-weight SDXL base: 3 levels, attention on levels 1 and 2 with depths 1 and 2, middle depth 2;
# bigG 48 wide with a 24-wide (non-square) projection, CLIP-L 32 wide; context 80; label_emb takes 24 + 6 x 8 = 72
TINY_BASE = (
    sd1_layout.UNetArch(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attention_levels=(False, True, True), context_dim=80, linear_projection=True,
                        head_channels=32, level_depths=(0, 1, 2), middle_depth=2, adm_in_channels=72),
    sd1_layout.TINY.vae, open_clip.OpenClipArch(width=48, layers=3, projection_dim=24),
    sd1_layout.TextArch(hidden_size=32, num_layers=2, intermediate_size=64))

LATENT = LatentFormat(channels=4, downscale=8, scale_factor=0.13025, preview_decoder="TAESDXL",
                      preview_rgb=(  # A1111's SDXL "Approx cheap"
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
))
TIME_IDS = 6  # original height and width, crop top and left, target height and width
REFINER_IDS = 5  # original height and width, crop top and left, aesthetic score


def size_ids(width: int, height: int, crop_top: int = 0, crop_left: int = 0) -> list[float]:
    """The base model's size conditioning, as A1111 sets it: the original size is the target size."""
    return [float(height), float(width), float(crop_top), float(crop_left), float(height), float(width)]


def refiner_ids(width: int, height: int, crop_top: int = 0, crop_left: int = 0, score: float = 6.0) -> list[float]:
    """The refiner's: the size, the crop and an aesthetic score."""
    return [float(height), float(width), float(crop_top), float(crop_left), float(score)]


def load_single_file(path: str, dtype, family: ModelFamily) -> Components:
    """SDXL base and inpainting (CLIP-L as embedder 0, bigG as embedder 1) and the refiner (bigG alone, as embedder
    0; it gets no ``text_encoder`` and bigG's tokenizer in both tokenizer places)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    state = model_files.read_state_dict(path)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    refiner = not _has(shapes, CLIP_L_PREFIX)
    g_prefix = REFINER_G_PREFIX if refiner else BIG_G_PREFIX
    unet_arch, vae_arch = sd1_layout.infer_unet(shapes), sd1_layout.infer_vae(shapes)
    big_g = open_clip.infer(shapes, g_prefix)
    # diffusers picks SDXL's added conditioning only for the real context widths; declare it for every size
    unet = sd1.build_unet(state, unet_arch, vae_arch, dtype, {
        "class_embed_type": None, "addition_embed_type": "text_time",
        "addition_time_embed_dim": (unet_arch.adm_in_channels - big_g.projection_dim) // (REFINER_IDS if refiner else TIME_IDS),
        "projection_class_embeddings_input_dim": unet_arch.adm_in_channels})
    vae = sd1.build_vae(state, vae_arch, dtype, family.latent.scale_factor)
    text_encoder = clip_l = None
    if not refiner:
        clip_l = sd1_layout.infer_text(shapes, CLIP_L_PREFIX)
        l_config = CLIPTextConfig(**sd1_layout.text_config_kwargs(clip_l))
        l_state = {"text_model." + key[len(CLIP_L_PREFIX):]: value for key, value in state.items()
                   if key.startswith(CLIP_L_PREFIX) and not key.endswith("position_ids")}
        text_encoder = build_module(lambda: CLIPTextModel(l_config), l_state, dtype)
    g_config = CLIPTextConfig(**open_clip.text_config_kwargs(big_g, big_g.layers))
    g_state = open_clip.to_transformers(state, g_prefix, big_g.layers)
    projection = state.get(g_prefix + "text_projection")  # used as x @ P; a Linear stores P transposed
    g_state["text_projection.weight"] = projection.t().contiguous() if projection is not None else \
        state[g_prefix + "text_projection.weight"]
    text_encoder_2 = build_module(lambda: CLIPTextModelWithProjection(g_config), g_state, dtype)
    scheduler_config = dict(family.scheduler_config, prediction_type="epsilon")
    if "v_pred" in shapes or any(p.search(sd2.declared_config(path)) for p in sd2.V_PREDICTION_CONFIG):
        scheduler_config["prediction_type"] = "v_prediction"
    if "ztsnr" in shapes:
        scheduler_config["rescale_betas_zero_snr"] = True
    g_tokenizer = load_tokenizer(pad_token="!")
    return Components(unet, vae, text_encoder, g_tokenizer if refiner else load_tokenizer(), scheduler_config, family,
                      {"unet": unet_arch, "vae": vae_arch, "clip_l": clip_l, "big_g": big_g},
                      text_encoder_2=text_encoder_2, tokenizer_2=g_tokenizer)


def load_diffusers_folder(path: str, dtype, family: ModelFamily) -> Components:
    import os

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    common = {"torch_dtype": dtype, "local_files_only": True}

    def part(kind, name: str):
        return kind.from_pretrained(os.path.join(path, name), **common).eval().requires_grad_(False)

    g_tokenizer = load_tokenizer(os.path.join(path, "tokenizer_2"), pad_token="!")
    if "text_encoder" not in family.components:  # the refiner: bigG alone, as StableDiffusionXLImg2ImgPipeline saves it
        text_encoder, tokenizer = None, g_tokenizer
    else:
        text_encoder, tokenizer = part(CLIPTextModel, "text_encoder"), load_tokenizer(os.path.join(path, "tokenizer"))
    return Components(part(UNet2DConditionModel, "unet"), part(AutoencoderKL, "vae"), text_encoder, tokenizer,
                      sd1.folder_scheduler_config(path, family), family,
                      text_encoder_2=part(CLIPTextModelWithProjection, "text_encoder_2"), tokenizer_2=g_tokenizer)


class _ClipLEncoder(conditioning.PromptEncoder):
    layer: int = -2

    def hidden_states(self, tokens):
        """CLIP-L's penultimate layer (or ``layer``) without the final layer norm."""
        return self.text_encoder(input_ids=tokens, output_hidden_states=True).hidden_states[self.layer]


class _BigGEncoder(conditioning.PromptEncoder):
    pooled: Any = None

    def hidden_states(self, tokens):
        """bigG's penultimate layer without the final layer norm; the projected pooled output of the first chunk
        is kept (A1111 pools the first 75 tokens of a long prompt)."""
        out = self.text_encoder(input_ids=tokens, output_hidden_states=True)
        if self.pooled is None:
            self.pooled = out.text_embeds
        return out.hidden_states[-2]


class PromptEncoder:
    """SDXL's conditioner, as A1111 computes it: both encoders read the prompt in the same 75-token chunks (CLIP-L
    pads with the end token, bigG with 0), each output gets its own emphasis, the context is CLIP-L's then
    bigG's channels; ``vector`` is bigG's pooled output and the 256-wide embeddings of the size ids (A1111's
    layout), and ``time_ids`` keeps the ids themselves for diffusers' UNet. Clip skip does not change SDXL
    conditioning, unless ``clip_l_skip`` (A1111's ``sdxl_clip_l_skip``): then CLIP-L's output is its
    ``clip_skip``-th layer from the end (1: the last, 2: the default penultimate), never bigG's. An all-empty
    negative prompt is zeros (context and pooled part), as A1111 does.

    The refiner's (a model without CLIP-L): bigG alone, and its ids end with an aesthetic score instead of the
    target size, ``aesthetic_scores[0]`` for prompts and ``[1]`` for negative prompts (A1111's settings
    ``sdxl_refiner_high_aesthetic_score`` 6.0 and ``..._low_...`` 2.5)."""

    def __init__(self, model: Any, *, clip_skip: int = 1, emphasis: str = "Original", comma_padding_backtrack: int = 20,
                 embeddings: Any = None, image_size: tuple[int, int] = (1024, 1024), crop: tuple[int, int] = (0, 0),
                 aesthetic_scores: tuple[float, float] = (6.0, 2.5), clip_l_skip: bool = False):
        options = {"emphasis": emphasis, "comma_padding_backtrack": comma_padding_backtrack, "embeddings": embeddings}
        self.model = model
        self.clip_l = _ClipLEncoder(model, embedding_part="clip_l", **options) if model.text_encoder is not None else None
        if self.clip_l is not None and clip_l_skip:
            self.clip_l.layer = -max(1, int(clip_skip))
        self.big_g = _BigGEncoder(model, tokenizer=model.tokenizer_2, text_encoder=model.text_encoder_2,
                                  embedding_part="clip_g", **options)
        self.image_size, self.crop, self.aesthetic_scores = image_size, crop, aesthetic_scores

    @property
    def used_embeddings(self) -> dict[str, Any]:
        return {**(self.clip_l.used_embeddings if self.clip_l else {}), **self.big_g.used_embeddings}

    def chunks(self, text: str):
        return (self.clip_l or self.big_g).chunks(text)

    def encode(self, texts: list[str], negative: bool = False):
        import torch
        from diffusers.models.embeddings import get_timestep_embedding

        self.big_g.pooled = None
        parts = ([self.clip_l.encode(texts)] if self.clip_l else []) + [self.big_g.encode(texts)]
        context = torch.cat(parts, dim=-1)
        pooled = self.big_g.pooled.to(context.dtype)
        if negative and all(text == "" for text in texts):
            context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
        if self.clip_l is None:
            row = refiner_ids(*self.image_size, *self.crop, score=self.aesthetic_scores[1 if negative else 0])
        else:
            row = size_ids(*self.image_size, *self.crop)
        ids = torch.tensor([row] * len(texts), device=context.device)
        width = self.model.unet.config.addition_time_embed_dim
        embedded = get_timestep_embedding(ids.flatten(), width, flip_sin_to_cos=True, downscale_freq_shift=0)
        vector = torch.cat([pooled, embedded.reshape(len(texts), -1).to(context.dtype)], dim=-1)
        return conditioning.DictWithShape(crossattn=context, vector=vector, time_ids=ids.to(context.dtype))


def unet_inputs(model, cond) -> dict:
    ids = cond["time_ids"].shape[1]
    pooled = cond["vector"][:, :cond["vector"].shape[1] - ids * model.unet.config.addition_time_embed_dim]
    return {"encoder_hidden_states": cond["crossattn"],
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": cond["time_ids"]}}


SDXL = ModelFamily(
    key="sdxl", label="SDXL", base="sdxl", default_size=1024,
    matches_checkpoint=lambda shapes: _base_in_channels(shapes) not in (None, 8, 9),
    matches_diffusers=lambda unet: _base_diffusers(unet) and unet.get("in_channels", 4) not in (8, 9),
    latent=LATENT, scheduler_config=MappingProxyType(dict(sd1.SCHEDULER_CONFIG)),
    components=("unet", "vae", "text_encoder", "text_encoder_2"),
    text_encoders=(("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")),
    lora_layout=(LoraLayout("lora_unet_", "unet", "unet."),
                 LoraLayout("lora_te1_", "text_encoder", "text_encoder.", text_encoder=True),
                 LoraLayout("lora_te2_", "text_encoder_2", "text_encoder_2.", text_encoder=True)),
    load_single_file=load_single_file, load_diffusers_folder=load_diffusers_folder, text_conditioner=PromptEncoder,
    size_conditioning=True, unet_inputs=unet_inputs,
    official_checkpoint=OfficialCheckpoint("SDXL base", "stabilityai/stable-diffusion-xl-base-1.0",
                                           "sd_xl_base_1.0.safetensors"),
)
SDXL_INPAINT = dataclasses.replace(
    SDXL, key="sdxl-inpaint", label="SDXL inpainting (9-channel UNet)", unet_in_channels=9, official_checkpoint=None,
    matches_checkpoint=lambda shapes: _base_in_channels(shapes) == 9,
    matches_diffusers=lambda unet: _base_diffusers(unet) and unet.get("in_channels") == 9,
)
SDXL_PIX2PIX = dataclasses.replace(
    SDXL, key="sdxl-pix2pix", label="SDXL InstructPix2Pix (8-channel UNet)", unet_in_channels=8, official_checkpoint=None,
    supported=False, note="InstructPix2Pix support is coming",
    matches_checkpoint=lambda shapes: _base_in_channels(shapes) == 8,
    matches_diffusers=lambda unet: _base_diffusers(unet) and unet.get("in_channels") == 8,
)
SDXL_REFINER = dataclasses.replace(
    SDXL, key="sdxl-refiner", label="SDXL refiner",
    matches_checkpoint=lambda shapes: _has(shapes, REFINER_G_PREFIX) and not _has(shapes, BIG_G_PREFIX) and LABEL_EMB in shapes,
    matches_diffusers=lambda unet: unet.get("addition_embed_type") == "text_time" and not (
        "text_encoder" in unet.get("_subfolders", ()) or unet.get("cross_attention_dim") == 2048),
    components=("unet", "vae", "text_encoder_2"), text_encoders=(("text_encoder_2", "clip_g"),),
    lora_layout=(LoraLayout("lora_unet_", "unet", "unet."),
                 LoraLayout("lora_te2_", "text_encoder_2", "text_encoder_2.", text_encoder=True)),
    official_checkpoint=None,
)
FAMILIES = (SDXL, SDXL_INPAINT, SDXL_PIX2PIX, SDXL_REFINER)
