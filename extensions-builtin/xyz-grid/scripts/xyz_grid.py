"""X/Y/Z plot: one image per combination of up to three axes of values (seed, steps, CFG, sampler, checkpoint,
prompt S/R, ...) assembled into labelled grids. Uses only the public Script API.

Other extensions add axes the A1111 way: find this module in ``scripts.scripts_data`` (module name
``xyz_grid.py``) and append an ``AxisOption`` to ``axis_options``."""
import copy
import csv
import itertools
import os
import re
from io import StringIO

import gradio as gr
from PIL import Image

import modules.scripts as scripts
from modules import images, processing, sd_models, sd_samplers, sd_schedulers, sd_vae, shared, upscaler
from modules.errors import UserInputError
from modules.processing import Processed
from modules.shared import opts, state

MAX_VALUES_PER_AXIS = 500
MAX_CELLS = 2000


def str_permutations(x):
    """Marks an axis whose values are every ordering of the listed items (Prompt order)."""
    return x


def apply_field(field: str):
    def apply(p, x, xs):
        setattr(p, field, x)
    return apply


def apply_override(setting: str, boolean: bool = False):
    def apply(p, x, xs):
        p.override_settings[setting] = str(x).lower() == "true" if boolean else x
    return apply


def apply_prompt(p, x, xs):
    """Prompt S/R: replace the first listed value with ``x`` in the prompts."""
    search = xs[0]
    if search not in p.prompt and search not in p.negative_prompt:
        raise UserInputError(f"Prompt S/R did not find {search!r} in the prompt or the negative prompt")
    p.prompt = p.prompt.replace(search, x)
    p.negative_prompt = p.negative_prompt.replace(search, x)
    for field in ("hr_prompt", "hr_negative_prompt"):
        if getattr(p, field, ""):
            setattr(p, field, getattr(p, field).replace(search, x))


def apply_order(p, x, xs):
    """Prompt order: put the listed items, where they occur in the prompt, in the order ``x``."""
    found = sorted((p.prompt.find(token), token) for token in x)
    missing = [token for position, token in found if position < 0]
    if missing:
        raise UserInputError(f"Prompt order did not find {', '.join(map(repr, missing))} in the prompt")
    pieces, cursor = [], 0
    for position, token in found:
        pieces.append(p.prompt[cursor:position])
        cursor = position + len(token)
    p.prompt = "".join(piece + token for piece, token in zip(pieces, x)) + p.prompt[cursor:]


def apply_checkpoint(p, x, xs):
    info = sd_models.get_closet_checkpoint_match(x)
    if info is None:
        raise UserInputError(f"unknown checkpoint {x!r}")
    p.override_settings["sd_model_checkpoint"] = info.title


def apply_size(p, x, xs):
    p.width, p.height = parse_size(x)


def apply_styles(p, x, xs):
    p.styles.extend(style.strip() for style in x.split(",") if style.strip())


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[x×*]\s*(\d+)\s*", str(text))
    if match is None:
        raise UserInputError(f"Size values are written WIDTHxHEIGHT, e.g. 512x768; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def hires_upscaler_names() -> list[str]:
    return [*shared.latent_upscale_modes, *(u.name for u in upscaler.all_upscalers())]


def scheduler_names() -> list[str]:
    return [s.label for s in sd_schedulers.schedulers if not s.unsupported]


def style_names() -> list[str]:
    return list(shared.prompt_styles.styles)


def confirm_found(label: str, noun: str, find, names) -> callable:
    """A confirm function: ``find(value)`` must find every value; the error lists ``names()``."""
    def confirm(p, xs):
        for x in xs:
            if find(x) is None:
                raise UserInputError(f"{label}: unknown {noun} {x!r}; choose from: {', '.join(names())}")
    return confirm


def confirm_in(label: str, known) -> callable:
    """A confirm function: every value must be one of ``known()``."""
    return confirm_found(label, "value", lambda x: x if x in known() else None, known)


confirm_samplers = confirm_found("Sampler", "sampler", sd_samplers.find_sampler, sd_samplers.visible_sampler_names)
confirm_checkpoints = confirm_found("Checkpoint name", "checkpoint", sd_models.get_closet_checkpoint_match,
                                    sd_models.checkpoint_tiles)
confirm_refiners = confirm_found("Refiner checkpoint", "checkpoint",
                                 lambda x: x if x == "None" else sd_models.get_closet_checkpoint_match(x),
                                 lambda: ["None", *sd_models.checkpoint_tiles()])
confirm_schedulers = confirm_found("Schedule type", "value", sd_schedulers.find, scheduler_names)


def confirm_sizes(p, xs):
    for x in xs:
        parse_size(x)


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {round(x, 8) if isinstance(x, float) else x}"


def format_value(p, opt, x):
    return round(x, 8) if isinstance(x, float) else x


def format_value_join_list(p, opt, x):
    return ", ".join(x)


def format_remove_path(p, opt, x):
    return os.path.basename(x)


def format_nothing(p, opt, x):
    return ""


def do_nothing(p, x, xs):
    pass


class AxisOption:
    """An axis: its label, value type, how a value is applied to a job, how it is written on the grid, an optional
    check of all values before anything runs, a cost (expensive axes change least often) and the choices."""

    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices
        self.is_img2img = None  # both tabs


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", lambda x: 0, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Var. seed", int, apply_field("subseed")),
    AxisOption("Var. strength", float, apply_field("subseed_strength")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
    AxisOption("Prompt order", str_permutations, apply_order, format_value=format_value_join_list),
    AxisOption("Sampler", str, apply_field("sampler_name"), format_value=format_value, confirm=confirm_samplers,
               choices=sd_samplers.visible_sampler_names),
    AxisOptionTxt2Img("Hires sampler", str, apply_field("hr_sampler_name"), format_value=format_value,
                      confirm=confirm_samplers, choices=sd_samplers.visible_sampler_names),
    AxisOption("Checkpoint name", str, apply_checkpoint, format_value=format_remove_path, confirm=confirm_checkpoints,
               cost=1.0, choices=lambda: sorted(sd_models.checkpoint_tiles(), key=str.casefold)),
    AxisOption("Refiner checkpoint", str, apply_field("refiner_checkpoint"), format_value=format_remove_path,
               confirm=confirm_refiners, cost=1.0,
               choices=lambda: ["None", *sorted(sd_models.checkpoint_tiles(), key=str.casefold)]),
    AxisOption("Refiner switch at", float, apply_field("refiner_switch_at")),
    AxisOption("VAE", str, apply_override("sd_vae"), cost=0.7, confirm=confirm_in("VAE", sd_vae.choices),
               choices=sd_vae.choices),
    AxisOption("Schedule type", str, apply_field("scheduler"), confirm=confirm_schedulers,
               choices=scheduler_names),
    AxisOption("Eta", float, apply_field("eta")),
    AxisOption("Clip skip", int, apply_override("CLIP_stop_at_last_layers")),
    AxisOption("Denoising", float, apply_field("denoising_strength")),
    AxisOption("Extra noise", float, apply_override("img2img_extra_noise")),
    AxisOptionImg2Img("Initial noise multiplier", float, apply_field("initial_noise_multiplier")),
    AxisOptionTxt2Img("Hires upscaler", str, apply_field("hr_upscaler"),
                      confirm=confirm_in("Hires upscaler", hires_upscaler_names), choices=hires_upscaler_names),
    AxisOptionTxt2Img("Hires upscale by", float, apply_field("hr_scale")),
    AxisOption("Styles", str, apply_styles, confirm=confirm_in("Styles", style_names), choices=style_names),
    AxisOption("Size", str, apply_size, format_value=format_value, confirm=confirm_sizes),
]

_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
RE_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\)|\[\s*(\d+)\s*\])?\s*$")


def split_values(text: str) -> list[str]:
    """Comma-separated values; double quotes protect commas inside a value."""
    text = str(text or "").strip()
    if not text:
        return []
    return [value.strip() for value in next(csv.reader(StringIO(text), skipinitialspace=True)) if value.strip()]


def join_values(values) -> str:
    buffer = StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def expand_numbers(values: list[str], kind: type) -> list:
    """``1-5`` (every integer), ``1-9 (+2)`` (a step), ``1-2 [5]`` (a count, evenly spread) and plain numbers."""
    result = []
    for value in values:
        match = RE_RANGE.match(value)
        if match is None:
            try:
                result.append(kind(value))
            except ValueError:
                raise UserInputError(f"{value!r} is not a number or a range such as 1-5, 1-9 (+2) or 1-2 [5]") from None
            continue
        start, end = float(match.group(1).replace(" ", "")), float(match.group(2).replace(" ", ""))
        if match.group(4) is not None:
            count = int(match.group(4))
            if not 1 <= count <= MAX_VALUES_PER_AXIS:
                raise UserInputError(f"{value!r}: the count must be between 1 and {MAX_VALUES_PER_AXIS}")
            numbers = [start + (end - start) * i / (count - 1) if count > 1 else start for i in range(count)]
        else:
            step = float(match.group(3).replace(" ", "")) if match.group(3) else (1.0 if end >= start else -1.0)
            if step == 0 or (end - start) * step < 0:
                raise UserInputError(f"{value!r}: the step goes away from the end of the range")
            count = int((end - start) / step + 1e-9) + 1
            if count > MAX_VALUES_PER_AXIS:
                raise UserInputError(f"{value!r} gives {count} values; an axis takes at most {MAX_VALUES_PER_AXIS}")
            numbers = [start + step * i for i in range(count)]
        result += [int(round(n)) for n in numbers] if kind is int else [round(n, 8) for n in numbers]
    return result


def axis_values(opt: AxisOption, text: str, dropdown, csv_mode: bool) -> tuple[list, str]:
    """(the axis's typed values, the value text written to the infotext)."""
    if opt.label == "Nothing":
        return [0], ""
    if opt.choices is not None and not csv_mode and dropdown:
        raw = [str(value) for value in dropdown]
        text = join_values(raw)
    else:
        raw = split_values(text)
    if not raw:
        raise UserInputError(f"{opt.label}: no values given")
    if opt.type is int or opt.type is float:
        values = expand_numbers(raw, opt.type)
    elif opt.type is str_permutations:
        values = list(itertools.permutations(raw))
    else:
        values = [opt.type(value) for value in raw]
    if len(values) > MAX_VALUES_PER_AXIS:
        raise UserInputError(f"{opt.label}: {len(values)} values; an axis takes at most {MAX_VALUES_PER_AXIS}")
    return values, text


def fix_axis_seeds(opt: AxisOption, values: list) -> list:
    if opt.label in ("Seed", "Var. seed"):
        return [processing.get_fixed_seed(value) for value in values]
    return values


def job_order(axes: list[tuple[AxisOption, list]]) -> list[tuple[int, ...]]:
    """Cell indices (ix, iy, iz) in the order they run: the costliest axis changes least often, and equal values of
    it run together, so each checkpoint is loaded once. Ties keep Z, then Y, then X order."""
    cells = [(ix, iy, iz) for iz in range(len(axes[2][1])) for iy in range(len(axes[1][1]))
             for ix in range(len(axes[0][1]))]
    by_cost = sorted((axis for axis in range(3) if axes[axis][0].cost > 0), key=lambda axis: -axes[axis][0].cost)
    first_seen = {}  # (axis, value index) -> index of the value's first occurrence on that axis
    for axis in by_cost:
        values = [repr(v) for v in axes[axis][1]]
        first_seen.update({(axis, i): values.index(value) for i, value in enumerate(values)})
    return sorted(cells, key=lambda cell: tuple(first_seen[axis, cell[axis]] for axis in by_cost))


def cell_job(p):
    """A copy of ``p`` that a cell can change without touching ``p`` or the other cells."""
    job = copy.copy(p)
    job.styles = list(p.styles)
    job.override_settings = dict(p.override_settings)
    job.extra_generation_params = dict(p.extra_generation_params)
    job.comments = dict(p.comments)
    job.do_not_save_grid = True
    return job


def label_grid(grid, cell_w: int, cell_h: int, column_labels: list[str], row_labels: list[str], margin: int):
    return images.draw_grid_annotations(grid, cell_w, cell_h, [[images.GridAnnotation(t)] for t in column_labels],
                                        [[images.GridAnnotation(t)] for t in row_labels], margin)


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def current_axis_options(self, is_img2img: bool) -> list[AxisOption]:
        return [opt for opt in axis_options if opt.is_img2img is None or opt.is_img2img == is_img2img]

    def ui(self, is_img2img):
        options = self.current_axis_options(is_img2img)
        labels = [opt.label for opt in options]
        controls = {}
        for axis, default in (("x", 1), ("y", 0), ("z", 0)):
            with gr.Row():
                kind = gr.Dropdown(label=f"{axis.upper()} type", choices=labels, value=labels[default], type="index",
                                   elem_id=self.elem_id(f"{axis}_type"))
                text = gr.Textbox(label=f"{axis.upper()} values", lines=1, elem_id=self.elem_id(f"{axis}_values"))
                dropdown = gr.Dropdown(label=f"{axis.upper()} values", choices=[], multiselect=True, visible=False,
                                       elem_id=self.elem_id(f"{axis}_values_dropdown"))
                fill = gr.Button(value="📒", elem_id=self.elem_id(f"{axis}_fill"), size="sm", scale=0)
            controls[axis] = (kind, text, dropdown, fill)
        with gr.Row():
            draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
            no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False, elem_id=self.elem_id("no_fixed_seeds"))
            vary_seeds = [gr.Checkbox(label=f"Vary seeds for {axis.upper()}", value=False,
                                      elem_id=self.elem_id(f"vary_seeds_{axis}")) for axis in "xyz"]
        with gr.Row():
            include_lone_images = gr.Checkbox(label="Include Sub Images", value=False,
                                              elem_id=self.elem_id("include_lone_images"))
            include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                            elem_id=self.elem_id("include_sub_grids"))
            csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                   elem_id=self.elem_id("csv_mode"))
        margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                elem_id=self.elem_id("margin_size"))
        with gr.Row():
            swaps = {pair: gr.Button(value=f"Swap {pair[0].upper()}/{pair[1].upper()} axes", size="sm",
                                     elem_id=self.elem_id(f"{pair}_axes_swap")) for pair in ("xy", "yz", "xz")}

        def shown(index, csv_text_mode):
            has_choices = options[index].choices is not None and not csv_text_mode
            choices = options[index].choices() if has_choices else []
            return gr.update(visible=not has_choices), gr.update(visible=has_choices, choices=choices, value=[])

        def fill_values(index, csv_text_mode):
            opt = options[index]
            if opt.choices is None:
                return gr.update(), gr.update()
            choices = opt.choices()
            return (gr.update(value=join_values(choices)) if csv_text_mode else gr.update(),
                    gr.update(choices=choices, value=choices) if not csv_text_mode else gr.update())

        for kind, text, dropdown, fill in controls.values():
            kind.change(shown, [kind, csv_mode], [text, dropdown])
            fill.click(fill_values, [kind, csv_mode], [text, dropdown])
        csv_mode.change(lambda *a: [u for i in range(3) for u in shown(a[i], a[3])],
                        [controls[a][0] for a in "xyz"] + [csv_mode],
                        [c for a in "xyz" for c in controls[a][1:3]])

        def swap(first, second):
            inputs = [*controls[first][:3], *controls[second][:3]]

            def exchange(kind_a, text_a, drop_a, kind_b, text_b, drop_b):
                return (labels[kind_b], text_b, gr.update(value=drop_b), labels[kind_a], text_a, gr.update(value=drop_a))
            swaps[first + second].click(exchange, inputs, inputs)

        for pair in swaps:
            swap(pair[0], pair[1])

        self.infotext_fields = [(controls[a][0], f"{a.upper()} Type") for a in "xyz"]
        self.infotext_fields += [(controls[a][1], f"{a.upper()} Values") for a in "xyz"]
        return [*controls["x"][:3], *controls["y"][:3], *controls["z"][:3], draw_legend, include_lone_images,
                include_sub_grids, no_fixed_seeds, *vary_seeds, margin_size, csv_mode]

    def resolve_axis(self, kind, is_img2img: bool) -> AxisOption:
        """An axis by index into this tab's list (what the UI sends) or by label (any case)."""
        options = self.current_axis_options(is_img2img)
        if isinstance(kind, str) and not kind.strip().lstrip("-").isdigit():
            for opt in options:
                if opt.label.lower() == kind.strip().lower():
                    return opt
            raise UserInputError(f"unknown axis type {kind!r}; choose from: {', '.join(o.label for o in options)}")
        index = int(kind)
        if not 0 <= index < len(options):
            raise UserInputError(f"axis type index {index} is out of range 0-{len(options) - 1}")
        return options[index]

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
            z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
            vary_seeds_y, vary_seeds_z, margin_size, csv_mode):
        if not no_fixed_seeds:
            processing.fix_seed(p)
        is_img2img = isinstance(p, processing.StableDiffusionProcessingImg2Img)
        axes, texts = [], []
        for kind, text, dropdown in ((x_type, x_values, x_values_dropdown), (y_type, y_values, y_values_dropdown),
                                     (z_type, z_values, z_values_dropdown)):
            opt = self.resolve_axis(kind, is_img2img)
            values, value_text = axis_values(opt, text, dropdown, bool(csv_mode))
            if not no_fixed_seeds:
                values = fix_axis_seeds(opt, values)
            if opt.confirm is not None:
                opt.confirm(p, values)
            axes.append((opt, values))
            texts.append(value_text)
        (x_opt, xs), (y_opt, ys), (z_opt, zs) = axes
        total = len(xs) * len(ys) * len(zs)
        if total > MAX_CELLS:
            raise UserInputError(f"{len(xs)} x {len(ys)} x {len(zs)} = {total} images; the plot takes at most {MAX_CELLS}")
        vary = (bool(vary_seeds_x), bool(vary_seeds_y), bool(vary_seeds_z))
        print(f"X/Y/Z plot will create {total * p.n_iter * p.batch_size} images on {len(zs)} {len(xs)}x{len(ys)} "
              f"grid{'s' if len(zs) > 1 else ''}. (Total steps to process: {total * p.n_iter * p.steps})")
        state.job_count = total * p.n_iter
        save_grid = opts.grid_save and not p.do_not_save_grid

        results: dict[tuple, tuple] = {}
        first_job = None
        for cell in job_order(axes):
            if state.interrupted or state.stopping_generation:
                break
            state.job = f"X/Y/Z plot {len(results) + 1} out of {total}"
            job = cell_job(p)
            for axis, (opt, values) in enumerate(axes):
                opt.apply(job, values[cell[axis]], values)
            if isinstance(job.seed, int) and job.seed != -1:
                job.seed += sum(index * stride for index, stride, on in
                                zip(cell, (1, len(xs), len(xs) * len(ys)), vary) if on)
            processed = processing.process_images(job)
            if not processed.images:
                break
            if cell == (0, 0, 0):
                first_job = (job, processed)
            results[cell] = processed
        if not results:
            return Processed(p, [])

        grid_info = self.grid_infotext(first_job or (None, next(iter(results.values()))), axes, texts, no_fixed_seeds)
        cell_images = {cell: processed.images[0] for cell, processed in results.items()}
        cell_w = max(image.width for image in cell_images.values())
        cell_h = max(image.height for image in cell_images.values())
        blank = Image.new("RGB", (cell_w, cell_h), opts.grid_background_color)
        sub_grids = []
        for iz in range(len(zs)):
            cells = [cell_images.get((ix, iy, iz), blank) for iy in range(len(ys)) for ix in range(len(xs))]
            grid = images.image_grid(cells, rows=len(ys))
            if draw_legend:
                grid = label_grid(grid, cell_w, cell_h, [x_opt.format_value(p, x_opt, x) for x in xs],
                                  [y_opt.format_value(p, y_opt, y) for y in ys], int(margin_size))
            sub_grids.append(grid)
        grids = list(sub_grids)
        if len(zs) > 1:
            grid = images.image_grid(sub_grids, rows=1)
            if draw_legend:
                grid = label_grid(grid, sub_grids[0].width, sub_grids[0].height,
                                  [z_opt.format_value(p, z_opt, z) for z in zs], [""], int(margin_size))
            grids = [grid, *sub_grids] if include_sub_grids else [grid]
        elif not include_sub_grids:
            grids = sub_grids[:1]
        if save_grid:
            job, processed = first_job or (p, next(iter(results.values())))
            images.save_image(grids[0], job.outpath_grids, "xyz_grid", processed.seed, processed.prompt,
                              opts.grid_format, info=grid_info, short_filename=not opts.grid_extended_filename,
                              grid=True, p=job)

        output, infotexts = list(grids), [grid_info] * len(grids)
        all_prompts, all_seeds = [], []
        for cell in sorted(results, key=lambda c: (c[2], c[1], c[0])):
            processed = results[cell]
            all_prompts += processed.all_prompts
            all_seeds += processed.all_seeds
            if include_lone_images:
                output += processed.images[processed.index_of_first_image:]
                infotexts += processed.infotexts[processed.index_of_first_image:]
        return Processed(p, output, all_seeds[0], grid_info, all_prompts=all_prompts, all_seeds=all_seeds,
                         infotexts=infotexts, index_of_first_image=len(grids) if include_lone_images else 0)

    def grid_infotext(self, first, axes, texts, no_fixed_seeds) -> str:
        """The first cell's infotext plus Script, X/Y/Z Type and Values (and the fixed seeds actually used)."""
        job, processed = first
        if job is None:
            return processed.infotexts[processed.index_of_first_image]
        params = {"Script": self.title()}
        for name, (opt, values), text in zip("XYZ", axes, texts):
            if opt.label == "Nothing":
                continue
            params[f"{name} Type"] = opt.label
            params[f"{name} Values"] = text
            if opt.label in ("Seed", "Var. seed") and not no_fixed_seeds:
                params[f"Fixed {name} Values"] = ", ".join(str(v) for v in values)
        saved = job.extra_generation_params
        job.extra_generation_params = {**saved, **params}
        try:
            return processing.create_infotext(job, job.all_prompts, job.all_seeds, job.all_subseeds)
        finally:
            job.extra_generation_params = saved
