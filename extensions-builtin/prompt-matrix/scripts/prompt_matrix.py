"""Prompt matrix: ``base|part 1|part 2`` renders every combination of the optional parts (2^n images) and
labels the grid with the parts, struck through where left out. Uses only the public Script API."""
import math

import gradio as gr

import modules.scripts as scripts
from modules import images, processing
from modules.errors import UserInputError
from modules.shared import opts, state

MAX_PARTS = 8  # 256 images


def matrix_prompts(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the ``|``-separated parts, one prompt per combination); bit i of a combination's index includes part i."""
    parts = [part.strip().strip(",") for part in prompt.split("|")]
    base, optional = parts[0], parts[1:]
    if not optional:
        raise UserInputError("the prompt has no '|' separated parts to combine, e.g. 'a cat|red hat|in space'")
    if len(optional) > MAX_PARTS:
        raise UserInputError(f"{len(optional)} optional parts would make {2 ** len(optional)} images; "
                             f"use at most {MAX_PARTS}")
    prompts = []
    for combination in range(1 << len(optional)):
        chosen = [text for i, text in enumerate(optional) if combination & (1 << i)]
        ordered = [*chosen, base] if put_at_start else [base, *chosen]
        prompts.append(delimiter.join(text for text in ordered if text))
    return parts, prompts


class Script(scripts.Script):
    def title(self):
        return "Prompt matrix"

    def ui(self, is_img2img):
        gr.HTML("<p>Separate the parts to combine with <code>|</code>: <code>a cat|red hat|in space</code></p>")
        with gr.Row():
            put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False,
                                       elem_id=self.elem_id("put_at_start"))
            different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False,
                                          elem_id=self.elem_id("different_seeds"))
        with gr.Row():
            prompt_type = gr.Radio(["positive", "negative"], label="Select prompt", value="positive",
                                   elem_id=self.elem_id("prompt_type"))
            variations_delimiter = gr.Radio(["comma", "space"], label="Select joining char", value="comma",
                                            elem_id=self.elem_id("variations_delimiter"))
        margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]

    def run(self, p, put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size):
        if prompt_type not in ("positive", "negative"):
            raise UserInputError(f"Select prompt must be 'positive' or 'negative', got {prompt_type!r}")
        if variations_delimiter not in ("comma", "space"):
            raise UserInputError(f"Select joining char must be 'comma' or 'space', got {variations_delimiter!r}")
        processing.fix_seed(p)
        source = p.prompt if prompt_type == "positive" else p.negative_prompt
        if isinstance(source, list):
            source = source[0]
        parts, prompts = matrix_prompts(source, bool(put_at_start), ", " if variations_delimiter == "comma" else " ")
        if prompt_type == "positive":
            p.prompt = prompts
        else:
            p.negative_prompt = prompts
        first_seed = p.seed
        p.seed = [first_seed + (i if different_seeds else 0) for i in range(len(prompts))]
        p.n_iter = math.ceil(len(prompts) / p.batch_size)
        if len(prompts) % p.batch_size:
            raise UserInputError(f"{len(prompts)} combinations cannot be split into batches of {p.batch_size}; "
                                 "use a batch size that divides it")
        save_grid = opts.grid_save and not p.do_not_save_grid
        p.do_not_save_grid = True
        state.job_count = p.n_iter
        print(f"Prompt matrix will create {len(prompts)} images using a total of {p.n_iter} batches.")

        processed = processing.process_images(p)
        cells = processed.images[processed.index_of_first_image:]
        if len(cells) != len(prompts):  # interrupted: no complete matrix to label
            return processed
        grid = images.image_grid(cells, p.batch_size, rows=1 << ((len(parts) - 1) // 2))
        grid = images.draw_prompt_matrix(grid, cells[0].width, cells[0].height, parts, int(margin_size))
        info = processed.infotexts[processed.index_of_first_image]
        processed.images = [grid, *cells]
        processed.infotexts = [info, *processed.infotexts[processed.index_of_first_image:]]
        processed.index_of_first_image = 1
        if save_grid:
            images.save_image(grid, p.outpath_grids, "prompt_matrix", first_seed, parts[0], opts.grid_format,
                              info=info, short_filename=not opts.grid_extended_filename, grid=True, p=p)
        return processed
