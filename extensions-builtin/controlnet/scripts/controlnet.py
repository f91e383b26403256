"""ControlNet as the A1111 extension runs it (issue 21, in progress): units through the API's
``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``, their residuals added on the denoiser seam for every
sampling pass (the hint resized for the hires pass), and the extension's ``ControlNet N`` infotext entries.
The page's unit controls are not built yet: each unit is a hidden value the API fills."""
import gradio as gr

import modules.scripts as scripts
from modules.api import encoding
from modules.controlnet import apply, models, preprocessors, units
from modules.errors import UserInputError

UNIT_COUNT = 3


class Script(scripts.Script):
    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(None) for _ in range(UNIT_COUNT)]

    def process(self, p, *values):
        p.controlnet_units = []
        model = p.sd_model
        for index, value in enumerate(values):
            unit = units.parse(value, index, encoding.decode_image)
            if unit is None or not unit.uses_model:
                continue
            path = models.find(unit.model)
            name = unit.model.split(" [")[0]
            net = models.load(path, model.dtype)
            models.check_family(net, model, name)
            picture = unit.image or (p.init_images[0] if getattr(p, "init_images", None) else None)
            if picture is None:
                raise UserInputError(f"controlnet unit {index}: no image given (and no img2img input to use)")
            resolution = unit.processor_res
            if unit.pixel_perfect:
                resolution = units.pixel_perfect_resolution(picture.size, (p.width, p.height), unit.resize_mode)
            hint = preprocessors.run(unit.module, picture, resolution, unit.threshold_a, unit.threshold_b)
            p.controlnet_units.append((unit, net.to(model.device), hint))
            p.extra_generation_params[f"ControlNet {index}"] = units.infotext(unit, models.title(name, path), resolution)

    def process_before_every_sampling(self, p, *values, **kwargs):
        resolved = getattr(p, "controlnet_units", None)
        hooks = p.denoiser_hooks.before_unet
        previous = getattr(p, "controlnet_hook", None)
        if previous in hooks:
            hooks.remove(previous)  # the first pass's: the hires pass gets hints at its own size
        if not resolved:
            return
        latent = kwargs["x"]
        height, width = (side * p.latent_format.downscale for side in latent.shape[-2:])
        engine_units = []
        for unit, net, hint in resolved:
            sized = units.fit(hint, width, height, unit.resize_mode)
            engine_units.append(apply.ControlUnit(unit.model, net, apply.hint_tensor(sized, width, height, net.device,
                                                                                    net.dtype),
                                                  unit.weight, unit.guidance_start, unit.guidance_end,
                                                  unit.control_mode))
        p.controlnet_hook = apply.residuals_hook(engine_units)
        hooks.append(p.controlnet_hook)
