"""Loopback (img2img): feed each result back in as the next input, for a number of loops, optionally changing the
denoising strength from loop to loop. Uses only the public Script API."""
import math

import gradio as gr

import modules.scripts as scripts
from modules import images, processing
from modules.errors import UserInputError
from modules.processing import Processed
from modules.shared import opts, state

CURVES = ["Linear", "Aggressive", "Lazy"]


def strength_at(loop: int, loops: int, start: float, final: float, curve: str) -> float:
    """The denoising strength of loop ``loop`` (0-based): from ``start`` towards ``final`` along the curve."""
    if loops <= 1 or curve not in CURVES:
        return start
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        progress = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        progress = 1 - math.cos(progress * math.pi * 0.5)
    return start + (final - start) * progress


class Script(scripts.Script):
    def title(self):
        return "Loopback"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        loops = gr.Slider(minimum=1, maximum=32, step=1, label="Loops", value=4, elem_id=self.elem_id("loops"))
        final_strength = gr.Slider(minimum=0, maximum=1, step=0.01, label="Final denoising strength", value=0.5,
                                   elem_id=self.elem_id("final_denoising_strength"))
        curve = gr.Dropdown(label="Denoising strength curve", choices=["Flat", *CURVES], value="Linear",
                            elem_id=self.elem_id("curve"))
        append_interrogation = gr.Dropdown(label="Append interrogated prompt at each iteration", choices=["None"],
                                           value="None", elem_id=self.elem_id("append_interrogation"))
        return [loops, final_strength, curve, append_interrogation]

    def run(self, p, loops, final_denoising_strength, denoising_curve, append_interrogation):
        loops = int(loops)
        if not 1 <= loops <= 32:
            raise UserInputError(f"loops must be between 1 and 32, got {loops}")
        if append_interrogation not in (None, "None"):
            raise UserInputError("appending an interrogated prompt needs the interrogator, which is not "
                                 "available; choose None")
        processing.fix_seed(p)
        repeats, first_seed, start_strength = p.n_iter, p.seed, float(p.denoising_strength)
        inputs, prompt = list(p.init_images), p.prompt
        saved_flags = p.batch_size, p.n_iter, p.do_not_save_grid
        p.n_iter, p.do_not_save_grid = 1, True
        state.job_count = loops * repeats
        history, infotexts = [], []
        try:
            for repeat in range(repeats):
                p.init_images, p.seed, p.denoising_strength = list(inputs), first_seed + repeat * p.batch_size, start_strength
                if opts.img2img_color_correction:
                    p.color_corrections = [processing.setup_color_correction(image) for image in inputs]
                for loop in range(loops):
                    if state.interrupted:
                        break
                    state.job = f"Iteration {loop + 1}/{loops}, batch {repeat + 1}/{repeats}"
                    p.denoising_strength = strength_at(loop, loops, start_strength, float(final_denoising_strength),
                                                       denoising_curve)
                    p.extra_generation_params["Loopback"] = f"{loop + 1}/{loops}"
                    processed = processing.process_images(p)
                    outputs = processed.images[processed.index_of_first_image:]
                    if not outputs:
                        break
                    history += outputs
                    infotexts += processed.infotexts[processed.index_of_first_image:]
                    p.init_images = outputs
                    p.seed = processed.seed + len(outputs)
                    p.prompt = prompt
        finally:
            p.batch_size, p.n_iter, p.do_not_save_grid = saved_flags
            p.denoising_strength = start_strength
        result = history
        if len(history) > 1 and opts.return_grid:
            grid = images.image_grid(history, rows=repeats * p.batch_size)
            if opts.grid_save and not p.do_not_save_grid:
                images.save_image(grid, p.outpath_grids, "grid", first_seed, prompt, opts.grid_format,
                                  info=infotexts[0], short_filename=not opts.grid_extended_filename, grid=True, p=p)
            result = [grid, *history]
            infotexts = [infotexts[0], *infotexts]
        return Processed(p, result, first_seed, infotexts[0] if infotexts else "", infotexts=infotexts,
                         index_of_first_image=1 if len(result) > len(history) else 0)
