"""SD upscale (img2img): upscale the input, split it into tiles of the img2img size, re-render every tile with
img2img and join them again with linear ramps over the overlap. Uses only the public Script API."""
import math

import gradio as gr

import modules.scripts as scripts
from modules import images, processing, shared
from modules.errors import UserInputError
from modules.processing import Processed
from modules.shared import opts, state


def find_upscaler(choice):
    """An entry of ``shared.sd_upscalers`` by index (the UI's radio) or by name (API clients)."""
    names = [u.name for u in shared.sd_upscalers]
    if isinstance(choice, str) and not choice.lstrip("-").isdigit():
        matches = [u for u in shared.sd_upscalers if u.name.lower() == choice.lower()]
        if not matches:
            raise UserInputError(f"SD upscale: unknown upscaler {choice!r}; choose one of: {', '.join(names)}")
        return matches[0]
    index = int(choice)
    if not 0 <= index < len(shared.sd_upscalers):
        raise UserInputError(f"SD upscale: upscaler index {index} is out of range 0..{len(shared.sd_upscalers) - 1}")
    return shared.sd_upscalers[index]


class Script(scripts.Script):
    def title(self):
        return "SD upscale"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; "
                       "use width and height sliders to set tile size</p>")
        overlap = gr.Slider(minimum=0, maximum=256, step=16, label="Tile overlap", value=64,
                            elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label="Scale Factor", value=2.0,
                                 elem_id=self.elem_id("scale_factor"))
        names = [u.name for u in shared.sd_upscalers]
        upscaler_index = gr.Radio(label="Upscaler", choices=names, value=names[0] if names else None, type="index",
                                  elem_id=self.elem_id("upscaler_index"))
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p, _, overlap, upscaler_index, scale_factor):
        upscaler = find_upscaler(upscaler_index if upscaler_index is not None else 0)
        overlap, scale_factor = int(overlap), float(scale_factor)
        if not 0 <= overlap < min(p.width, p.height):
            raise UserInputError(f"SD upscale: tile overlap must be between 0 and the tile size "
                                 f"({min(p.width, p.height)}), got {overlap}")
        processing.fix_seed(p)
        source = images.flatten(p.init_images[0], opts.img2img_background_color)
        if upscaler.name != "None":
            source = upscaler.scaler.upscale(source, scale_factor, upscaler.data_path)
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = upscaler.name

        grid = images.split_grid(source, tile_w=p.width, tile_h=p.height, overlap=overlap)
        cells = [cell for _, _, row in grid.tiles for cell in row]  # [x, w, tile image], row by row
        per_job, repeats, first_seed = p.batch_size, p.n_iter, p.seed
        keep_saving_flags = p.do_not_save_samples, p.do_not_save_grid
        save = opts.samples_save and not p.do_not_save_samples
        jobs_per_repeat = math.ceil(len(cells) / per_job)
        state.job_count = jobs_per_repeat * repeats
        p.n_iter, p.do_not_save_grid, p.do_not_save_samples = 1, True, True
        results, info = [], ""
        try:
            for repeat in range(repeats):
                p.seed = first_seed + repeat
                rendered = []
                for start in range(0, len(cells), per_job):
                    if state.interrupted:
                        break
                    chunk = cells[start:start + per_job]
                    p.batch_size, p.init_images = len(chunk), [cell[2] for cell in chunk]
                    state.job = f"SD upscale: tiles {start + 1}-{start + len(chunk)} of {len(cells)}"
                    processed = processing.process_images(p)
                    info = info or processed.info
                    rendered += processed.images[processed.index_of_first_image:]
                    p.seed = processed.seed + 1
                if len(rendered) < len(cells):
                    break
                for cell, tile in zip(cells, rendered):
                    cell[2] = tile
                combined = images.combine_grid(grid)
                results.append(combined)
                if save:
                    images.save_image(combined, p.outpath_samples, "", first_seed + repeat, p.prompt, opts.samples_format,
                                      info=info, p=p)
        finally:
            p.batch_size, p.n_iter = per_job, repeats
            p.do_not_save_samples, p.do_not_save_grid = keep_saving_flags
        return Processed(p, results, first_seed, info, infotexts=[info] * len(results))
