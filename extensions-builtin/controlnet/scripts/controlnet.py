"""ControlNet and IP-Adapter as the A1111 extension runs them: units in the page (an accordion per unit, as the
extension's) and through the API's ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``; ControlNet residuals
added on the denoiser seam for every sampling pass (the hint resized for the hires pass), IP-Adapters attached to
the UNet for the job; the extension's ``ControlNet N`` infotext entries, written and read back. As in the extension,
each unit is one script argument: a value holding the unit's fields, which the page's controls keep up to date and
the API sets directly."""
import gradio as gr

import modules.scripts as scripts
from modules import lowvram
from modules.api import encoding
from modules.controlnet import apply, ip_adapter, models, preprocessors, units
from modules.engine import denoiser
from modules.errors import UserInputError
from modules.families.spec import family_of_context_width
from modules.shared import opts


class Script(scripts.Script):
    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        values = []
        self.infotext_fields = []  # each unit's controls, filled from its "ControlNet N" entry by paste and Send to
        with gr.Accordion("ControlNet", open=False, elem_id=self.elem_id("accordion")):
            for index in range(max(1, int(opts.control_net_unit_count))):
                with gr.Accordion(f"ControlNet Unit {index}", open=index == 0):
                    values.append(self._unit_controls(index))
        return values

    def _unit_controls(self, index: int):
        def elem(name: str) -> str:
            return self.elem_id(f"unit{index}_{name}")

        value = gr.State(None)
        with gr.Row():
            # an editor, so that a mask can be painted on the picture for the inpaint preprocessors
            image = gr.ImageEditor(label="Image (empty: the img2img input); paint the area to inpaint", type="pil",
                                   sources=["upload", "clipboard"], format="png", layers=False, transforms=(),
                                   brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                                   elem_id=elem("image"))
            preview = gr.Image(label="Preprocessor preview", type="pil", interactive=False, elem_id=elem("preview"))
        with gr.Row():
            enabled = gr.Checkbox(label="Enable", value=False, elem_id=elem("enabled"))
            pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=elem("pixel_perfect"))
        with gr.Row():
            module = gr.Dropdown(list(preprocessors.PREPROCESSORS), value="none", label="Preprocessor",
                                 elem_id=elem("module"))
            model = gr.Dropdown(["None", *self._model_titles()], value="None", label="Model", elem_id=elem("model"))
            refresh = gr.Button("🔄", elem_id=elem("refresh"), scale=0, min_width=40)
            run_preview = gr.Button("💥 Preview", elem_id=elem("run_preview"), scale=0, min_width=90)
        with gr.Row():
            weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight", elem_id=elem("weight"))
            start = gr.Slider(0, 1, value=0.0, step=0.01, label="Starting Control Step", elem_id=elem("guidance_start"))
            end = gr.Slider(0, 1, value=1.0, step=0.01, label="Ending Control Step", elem_id=elem("guidance_end"))
        with gr.Row():
            resolution = gr.Slider(64, 2048, value=512, step=1, label="Preprocessor Resolution",
                                   elem_id=elem("processor_res"))
            # shown with the chosen preprocessor's labels, ranges and defaults (none has no thresholds)
            threshold_a = gr.Slider(1, 255, value=100, step=1, label="Threshold A", visible=False,
                                    elem_id=elem("threshold_a"))
            threshold_b = gr.Slider(1, 255, value=200, step=1, label="Threshold B", visible=False,
                                    elem_id=elem("threshold_b"))
        control_mode = gr.Radio(list(units.CONTROL_MODES), value=units.CONTROL_MODES[0], label="Control Mode",
                                elem_id=elem("control_mode"))
        resize_mode = gr.Radio(list(units.RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                               elem_id=elem("resize_mode"))
        hr_option = gr.Radio(list(units.HR_OPTIONS), value="Both", label="Hires-Fix Option", elem_id=elem("hr_option"))
        fields = {"enabled": enabled, "image": image, "module": module, "model": model, "weight": weight,
                  "guidance_start": start, "guidance_end": end, "processor_res": resolution,
                  "threshold_a": threshold_a, "threshold_b": threshold_b, "control_mode": control_mode,
                  "resize_mode": resize_mode, "pixel_perfect": pixel_perfect, "hr_option": hr_option}
        names, controls = list(fields), list(fields.values())
        for control in controls:
            control.change(lambda *given: dict(zip(names, given)), controls, [value], queue=False)
        module.change(self._sliders_of, [module], [resolution, threshold_a, threshold_b], queue=False)
        module.input(self._threshold_defaults, [module], [threshold_a, threshold_b], queue=False)  # not on paste
        for name, control in fields.items():
            if name != "image":
                self.infotext_fields.append((control, self._pasted(index, name)))
        refresh.click(lambda: gr.update(choices=["None", *self._model_titles()]), None, [model], queue=False)
        run_preview.click(self._preview, [image, module, resolution, threshold_a, threshold_b], [preview])
        return value

    @staticmethod
    def _sliders_of(module):
        """The resolution and threshold sliders as the chosen preprocessor takes them (hidden when it has none); their
        values are left alone, so that pasted thresholds stay."""
        try:
            preprocessor = preprocessors.find(module)
        except UserInputError:
            return gr.update(), gr.update(), gr.update()
        thresholds = []
        for slider in (preprocessor.threshold_a, preprocessor.threshold_b):
            if slider is None:
                thresholds.append(gr.update(visible=False))
            else:
                label, low, high, _ = slider
                thresholds.append(gr.update(visible=True, label=label, minimum=low, maximum=high,
                                            step=1 if high > 8 else 0.01))
        return gr.update(visible=preprocessor.uses_resolution), *thresholds

    @staticmethod
    def _threshold_defaults(module):
        """The chosen preprocessor's default thresholds (when the user picks it)."""
        preprocessor = preprocessors.find(module)
        return tuple(gr.update(value=slider[3]) if slider else gr.update()
                     for slider in (preprocessor.threshold_a, preprocessor.threshold_b))

    def _pasted(self, index: int, name: str):
        """The value of a unit's control from a pasted infotext's ``ControlNet {index}`` entry (left alone when the
        infotext has none; a model is matched by name to the one here)."""
        def value(params):
            unit = units.from_infotext(params.get(f"ControlNet {index}"))
            if unit is None:
                return gr.skip()
            if name == "enabled":
                return True
            if name not in unit:
                return gr.skip()
            if name == "model":
                bare = unit["model"].split(" [")[0]
                titles = {title.split(" [")[0]: title for title in self._model_titles()}
                return titles.get(bare, gr.skip())
            if name == "module":
                return preprocessors.canonical(unit["module"])
            return unit[name]
        return value

    @staticmethod
    def _model_titles() -> list:
        return [models.title(name, path) for name, path in models.list_models().items()]

    @staticmethod
    def _preview(image, module, resolution, threshold_a, threshold_b):
        unit = units.parse({"image": image}, 0, encoding.decode_image)
        if unit.image is None:
            raise gr.Error("ControlNet: upload an image to preview its preprocessor")
        try:
            return preprocessors.run(module, unit.image, int(resolution), threshold_a, threshold_b, unit.mask)
        except UserInputError as e:
            raise gr.Error(str(e)) from None

    def args_from_infotext(self, params):
        """The units of an API request's ``infotext`` (their images: the img2img input, or none)."""
        found = [units.from_infotext(params.get(f"ControlNet {index}")) for index in range(self.args_to - self.args_from)]
        return found if any(found) else None

    def process(self, p, *values):
        p.controlnet_units, p.controlnet_detected_maps = [], []
        model = p.sd_model
        ip_adapter.detach(model.unet)  # an adapter a failed job left attached
        adapters, states, names = [], [], []
        for index, value in enumerate(values):
            unit = units.parse(value, index, encoding.decode_image)
            if unit is None or not unit.uses_model:
                continue
            path = models.find(unit.model)
            name = unit.model.split(" [")[0]
            picture, mask = unit.image, unit.mask
            if picture is None and getattr(p, "init_images", None):  # the img2img input, and its inpaint mask
                picture, mask = p.init_images[0], mask or getattr(p, "image_mask", None)
            if picture is None:
                raise UserInputError(f"controlnet unit {index}: no image given (and no img2img input to use)")
            unit.module = preprocessors.canonical(unit.module)  # the name of what runs, for the infotext
            title = models.title(name, path)
            preprocessor = preprocessors.find(unit.module)
            if ip_adapter.is_ip_adapter(path) or preprocessor.embeds:
                state = self._ip_adapter_state(index, unit, path, name, model)
                positive, negative = ip_adapter.embed(unit.module, state, picture, name, unit.resize_mode)
                adapters.append(ip_adapter.Adapter(positive, negative, unit.weight, unit.guidance_start,
                                                   unit.guidance_end, unit.applies_to))
                states.append(state)
                names.append(name)
                p.extra_generation_params[f"ControlNet {index}"] = units.infotext(unit, title, preprocessor,
                                                                                  unit.processor_res)
                continue
            offload = unit.low_vram or lowvram.is_enabled(model)  # the ControlNet on the GPU only for its calls
            net = models.load(path, model.dtype, like=model.unet.config, device=None if offload else model.device,
                              offloaded_for=model.device if offload else None)
            models.check_family(net, model, name)
            resolution = unit.processor_res
            if unit.pixel_perfect:
                resolution = units.pixel_perfect_resolution(picture.size, (p.width, p.height), unit.resize_mode)
            unit.threshold_a, unit.threshold_b = preprocessors.thresholds(unit.module, unit.threshold_a,
                                                                          unit.threshold_b)  # the infotext's
            hint = preprocessors.run(unit.module, picture, resolution, unit.threshold_a, unit.threshold_b, mask)
            p.controlnet_units.append((unit, net, hint, model.device if offload else None))
            if unit.module != "none" and unit.save_detected_map:
                p.controlnet_detected_maps.append(units.fit(hint, p.width, p.height, unit.resize_mode).convert("RGB"))
            p.extra_generation_params[f"ControlNet {index}"] = units.infotext(unit, title, preprocessor, resolution)
        if adapters and lowvram.mode_of(model) == "lowvram":
            raise UserInputError("IP-Adapter does not work with --lowvram (the UNet moves block by block, the adapter "
                                 "is added for one job); use --medvram")
        if adapters:  # attached last: nothing that can fail comes between attaching and the hook that feeds it
            hook = ip_adapter.embeds_hook(model.unet, adapters, lambda: p.is_hr_pass)
            ip_adapter.attach(model.unet, states, names)
            p.denoiser_hooks.before_unet.append(hook)
            if p.denoiser_hooks.unet_forward is denoiser.call_unet:
                p.denoiser_hooks.unet_forward = ip_adapter.eager_unet

    @staticmethod
    def _ip_adapter_state(index: int, unit, path: str, name: str, model) -> dict:
        """The adapter's weights, refused (naming the unit) when model and preprocessor do not go together or the
        adapter is for another family than the checkpoint."""
        if not ip_adapter.is_ip_adapter(path):
            raise UserInputError(f"controlnet unit {index}: the {unit.module} preprocessor makes embeddings for an "
                                 f"IP-Adapter model; {name} is a ControlNet")
        if not ip_adapter.encoder_name(unit.module):
            raise UserInputError(f"controlnet unit {index}: {name} is an IP-Adapter; its preprocessor must be one of "
                                 f"{', '.join(ip_adapter.ENCODERS)}, not {unit.module}")
        if unit.control_mode != units.CONTROL_MODES[0]:
            raise UserInputError(f"controlnet unit {index}: control_mode {unit.control_mode!r} is for ControlNets; an "
                                 f"IP-Adapter unit takes Balanced")
        state = ip_adapter.read(path)
        width, wanted = ip_adapter.context_width(state), model.unet.config.cross_attention_dim
        if width != wanted:
            raise UserInputError(f"IP-Adapter {name} is for {family_of_context_width(width)}, not for this "
                                 f"{model.family.label} checkpoint ({wanted}-wide)")
        return state

    def postprocess(self, p, processed, *values):
        """The UNet back as it was; the preprocessors' outputs after the images, as the extension returns them
        (unless the setting ``control_net_no_detectmap`` or a unit's ``save_detected_map`` says not to, or a
        selectable script runs the job: scripts such as Loopback take every image of their jobs as theirs)."""
        ip_adapter.detach(p.sd_model.unet)
        script_selected = bool(p.script_args and p.script_args[0])
        if not opts.control_net_no_detectmap and not script_selected:
            processed.images.extend(getattr(p, "controlnet_detected_maps", []))

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
        for unit, net, hint, offload_device in resolved:
            if not unit.applies_to(p.is_hr_pass):
                continue
            sized = units.fit(hint, width, height, unit.resize_mode)
            engine_units.append(apply.ControlUnit(unit.model, net, apply.hint_tensor(sized, width, height, latent.device,
                                                                                    net.dtype),
                                                  unit.weight, unit.guidance_start, unit.guidance_end,
                                                  unit.control_mode, offload_device))
        p.controlnet_hook = apply.residuals_hook(engine_units)
        hooks.append(p.controlnet_hook)
