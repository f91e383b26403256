"""Prompts from file or textbox: one job per line. A line is a prompt, or ``--key value`` options that set
processing fields by name (``--prompt "a cat" --steps 30 --seed 5``). Uses only the public Script API."""
import copy
import random
import shlex

import gradio as gr

import modules.scripts as scripts
from modules import sd_samplers
from modules.errors import UserInputError
from modules.processing import Processed, process_images
from modules.shared import state


def as_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def sampler_name(text: str) -> str:
    name = sd_samplers.samplers_map.get(text.lower())
    if name is None:
        raise ValueError(f"unknown sampler {text!r}")
    return name


FIELDS = {
    "outpath_samples": str, "outpath_grids": str, "prompt_for_display": str, "prompt": str,
    "negative_prompt": str, "styles": list, "seed": int, "subseed_strength": float, "subseed": int,
    "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_index": int, "sampler_name": sampler_name,
    "scheduler": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float, "width": int, "height": int,
    "restore_faces": as_bool, "tiling": as_bool, "do_not_save_samples": as_bool, "do_not_save_grid": as_bool,
    "denoising_strength": float,
}


def parse_line(line: str) -> dict:
    """``--key value`` pairs of one line as typed processing fields; list fields take every value up to the next key."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UserInputError(f"cannot read {line!r}: {e}") from e
    fields, position = {}, 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise UserInputError(f"expected --option in {line!r}, got {word!r}")
        key = word[2:]
        if key not in FIELDS:
            raise UserInputError(f"unknown option --{key}; known options: "
                                 f"{', '.join('--' + k for k in FIELDS)}")
        if position + 1 >= len(words):
            raise UserInputError(f"--{key} needs a value")
        if FIELDS[key] is list:
            values = []
            position += 1
            while position < len(words) and not words[position].startswith("--"):
                values.append(words[position])
                position += 1
            fields[key] = values
            continue
        try:
            fields[key] = FIELDS[key](words[position + 1])
        except ValueError as e:
            raise UserInputError(f"--{key}: {e}") from e
        position += 2
    return fields


class Script(scripts.Script):
    def title(self):
        return "Prompts from file or textbox"

    def ui(self, is_img2img):
        checkbox_iterate = gr.Checkbox(label="Iterate seed every line", value=False, elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start",
                                   elem_id=self.elem_id("prompt_position"))
        prompt_txt = gr.Textbox(label="List of prompt inputs", lines=1, elem_id=self.elem_id("prompt_txt"))
        upload = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))
        upload.change(fn=lambda data: (data or b"").decode("utf8", errors="replace") if data is not None else gr.update(),
                      inputs=[upload], outputs=[prompt_txt], show_progress="hidden")
        prompt_txt.change(lambda text: gr.update(lines=7) if "\n" in (text or "") else gr.update(lines=2),
                          inputs=[prompt_txt], outputs=[prompt_txt], show_progress="hidden")
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    def run(self, p, checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt: str):
        lines = [line.strip() for line in (prompt_txt or "").splitlines() if line.strip()]
        if not lines:
            raise UserInputError("the list of prompt inputs is empty")
        jobs = []
        for line in lines:
            jobs.append(parse_line(line) if line.startswith("--") else {"prompt": line})
        state.job_count = sum(job.get("n_iter", p.n_iter) for job in jobs)
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed == -1:
            p.seed = random.randrange(4294967294)
        images, all_prompts, infotexts = [], [], []
        for job in jobs:
            if state.interrupted:
                break
            copy_p = copy.copy(p)
            copy_p.extra_generation_params = dict(p.extra_generation_params)
            copy_p.override_settings = dict(p.override_settings)
            for key, value in job.items():
                if key == "prompt" and p.prompt:
                    value = f"{p.prompt} {value}" if prompt_position == "end" else f"{value} {p.prompt}"
                setattr(copy_p, key, value)
            processed = process_images(copy_p)
            images += processed.images
            all_prompts += processed.all_prompts
            infotexts += processed.infotexts
            if checkbox_iterate:
                p.seed = p.seed + p.batch_size * p.n_iter
        return Processed(p, images, p.seed, infotexts[0] if infotexts else "", all_prompts=all_prompts,
                         infotexts=infotexts)
