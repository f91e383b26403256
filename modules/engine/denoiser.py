"""The denoiser of one sampling run: one guided prediction per model call, with typed extension points.

A :class:`Denoiser` is built once per run by ``sampling.sample``. For each model call it

1. batches the latents, the image conditioning and the text conditioning: one row per ``AND`` part of each image,
   then (with guidance) one row per image for the negative prompt;
2. runs A1111's ``on_cfg_denoiser`` callbacks, which see A1111's shapes (a tensor, or SDXL's dict);
3. builds a :class:`UNetCall` (latents, timestep and the UNet's keyword arguments from the model family) and hands
   it to every ``before_unet`` hook, which may change it: ControlNet adds its residuals here;
4. calls ``unet_forward(unet, call)``, by default the UNet itself; a CUDA-graph or compiled UNet replaces this
   function instead of branching the loop;
5. hands the :class:`UNetResult` to every ``after_unet`` hook, which may change the predictions;
6. combines them as ``uncond + sum_i w_i * cfg * (cond_i - uncond)`` between the ``on_cfg_denoised`` and
   ``on_cfg_after_cfg`` callbacks.

Scripts reach the hooks through ``p.denoiser_hooks`` (for example in ``process_before_every_sampling``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from modules import script_callbacks
from modules.engine import conditioning


@dataclass
class UNetCall:
    """What the UNet is called with for one model call."""
    x: Any  # (rows, C, h, w): the latents, with the image conditioning's channels appended
    timestep: Any
    # every other UNet argument: encoder_hidden_states, added_cond_kwargs, ControlNet residuals ... Hooks replace
    # tensors rather than change them in place: the context is shared by the calls of a prompt-schedule segment.
    kwargs: dict
    step: int  # 0-based model call of the run
    total_steps: int
    rows: list[list[tuple[int, float]]]  # per image: its (row, weight) for each AND part
    guided: bool  # the last rows (one per image) are the negative prompt's


@dataclass
class UNetResult:
    call: UNetCall
    output: Any  # (rows, C, h, w), float32; a hook may replace it


def call_unet(unet: Any, call: UNetCall):
    """The default ``unet_forward``: the model's own forward."""
    return unet(call.x, call.timestep, **call.kwargs, return_dict=False)[0]


@dataclass
class DenoiserHooks:
    """The per-step extension points of a sampling run."""
    before_unet: list[Callable[[UNetCall], None]] = field(default_factory=list)
    after_unet: list[Callable[[UNetResult], None]] = field(default_factory=list)
    unet_forward: Callable[[Any, UNetCall], Any] = call_unet


class Denoiser:
    def __init__(self, run: Any):
        self.run = run
        self.model = run.model
        self.hooks: DenoiserHooks = run.hooks
        self._context: tuple | None = None  # (schedule key, conds_list, the UNet's context) of the last call

    def __call__(self, x, t, call_index: int):
        """The guided prediction for latents ``x`` (B, C, h, w) at timestep ``t``, model call ``call_index``."""
        import torch

        run, model = self.run, self.model
        key = conditioning.schedule_key(run.cond, run.uncond, call_index)
        callbacks = bool(script_callbacks.callback_map["callbacks_cfg_denoiser"])
        reuse = not callbacks and self._context is not None and self._context[0] == key
        if reuse:  # the same prompt-schedule segment as the last call, and no callback to see the batch
            _, conds_list, context = self._context
        else:
            conds_list, cond = conditioning.reconstruct_multicond_batch(run.cond, call_index)
        batch = x.shape[0]
        plain = all(len(conds) == 1 and conds[0][1] == 1.0 for conds in conds_list)
        guided = run.cfg_scale != 1.0 or not plain

        def batched(tensor):  # one row per AND part of each image, then (with guidance) one per image for uncond
            rows = torch.cat([tensor[i:i + 1].expand(len(conds), *tensor.shape[1:]) for i, conds in enumerate(conds_list)])
            return torch.cat([rows, tensor]) if guided else rows

        image_cond = batched(run.image_conditioning.to(x)) if run.image_conditioning is not None else None
        total = run.schedule_steps or run.steps
        dtype = model.dtype
        if reuse:
            x_in = batched(x)
        else:
            uncond = conditioning.reconstruct_cond_batch(run.uncond, call_index)
            params = script_callbacks.CFGDenoiserParams(batched(x), image_cond, t, call_index, total, cond, uncond)
            script_callbacks.cfg_denoiser_callback(params)  # scripts may change anything here: nothing is kept
            x_in, cond, uncond = params.x, params.text_cond, params.text_uncond
            image_cond = params.image_cond
            if guided and cond.shape[1] != uncond.shape[1] and run.empty_cond is not None:
                length = max(cond.shape[1], uncond.shape[1])
                cond = conditioning.pad_to_length(cond, length, run.empty_cond)
                uncond = conditioning.pad_to_length(uncond, length, run.empty_cond)
            context = conditioning.cat_conds([cond, uncond]) if guided else cond
            context = conditioning.map_cond(lambda tensor: tensor.to(dtype), context)
            self._context = None if callbacks else (key, conds_list, context)
        if image_cond is not None:
            x_in = torch.cat([x_in, image_cond], dim=1)
        call = UNetCall(x_in.to(dtype), t, model.family.unet_inputs(model, context), call_index, total, conds_list, guided)
        for hook in self.hooks.before_unet:
            hook(call)
        result = UNetResult(call, self.hooks.unet_forward(model.unet, call).float())
        for hook in self.hooks.after_unet:
            hook(result)
        out = result.output
        script_callbacks.cfg_denoised_callback(script_callbacks.CFGDenoisedParams(out, call_index, total, model.unet))
        if not guided:
            return out
        uncond_out = out[-batch:]
        if plain:  # one prompt per image: the same arithmetic as the loop below, in one expression
            denoised = uncond_out + (out[:batch] - uncond_out) * run.cfg_scale
        else:
            denoised = uncond_out.clone()
            for i, conds in enumerate(conds_list):
                for row, weight in conds:
                    denoised[i] += (out[row] - uncond_out[i]) * (weight * run.cfg_scale)
        after = script_callbacks.AfterCFGCallbackParams(denoised, call_index, total)
        script_callbacks.cfg_after_cfg_callback(after)
        return after.x
