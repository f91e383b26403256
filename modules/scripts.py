"""The A1111 Script API: ``Script`` classes found in ``scripts/*.py`` of the install dir and of every active
extension, and the ``ScriptRunner`` of each generation tab that builds their UI and calls their hooks.

Selectable scripts (``show`` returns True) appear in the Script dropdown and replace ``process_images`` with their
``run``; always-on scripts (``show`` returns ``AlwaysVisible``) have their hooks called inside every
``process_images``. An exception in a script fails only that job (selectable) or that hook (always-on, reported
in the job's comments), with a message naming the extension.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

from modules import errors, extensions, paths, script_callbacks
from modules.errors import UserInputError

AlwaysVisible = object()


@dataclass
class PostprocessImageArgs:
    image: Any


@dataclass
class PostprocessBatchListArgs:
    images: list


@dataclass
class PostSampleArgs:
    samples: Any


@dataclass
class PostprocessMaskOverlayArgs:
    index: int
    mask_for_overlay: Any
    overlay_image: Any


@dataclass
class MaskBlendArgs:
    current_latent: Any
    nmask: Any
    init_latent: Any
    mask: Any
    blended_latent: Any
    denoiser: Any = None
    sigma: Any = None

    @property
    def is_final_blend(self) -> bool:
        return self.denoiser is None


@dataclass
class OnComponent:
    component: Any


class ScriptError(UserInputError):
    """A script of an extension failed; the message names the script and its extension."""


def _named_error(script: Script, error: UserInputError) -> ScriptError:
    """The script's bad-input error with its title in front (unless the message already starts with it)."""
    message = str(error)
    return ScriptError(message if message.lower().startswith(script.title().lower()) else f"{script.title()}: {message}")


class Script:
    """Base class of every script (see reference-a1111 §5.2). Only ``title`` is required."""
    name: str | None = None
    section: str | None = None
    filename: str | None = None
    extension_name: str = ""
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname: str | None = None
    group = None
    create_group = True
    controls = None
    infotext_fields: list | None = None
    paste_field_names: list | None = None
    api_info = None
    setup_for_ui_only = False
    on_before_component_elem_id: list | None = None
    on_after_component_elem_id: list | None = None

    def title(self) -> str:
        raise NotImplementedError

    def ui(self, is_img2img: bool):
        pass

    def show(self, is_img2img: bool):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def args_from_infotext(self, params: dict) -> list | None:
        """(This project's addition to the script API.) An always-on script's arguments from a parsed infotext, for an
        API request that gives ``infotext`` and no ``alwayson_scripts`` entry for the script; None keeps its defaults."""
        return None

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostprocessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id: str) -> None:
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id: str) -> None:
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """``script_[txt2img_|img2img_]<title>_<item_id>``; the tab prefix only for scripts shown on both tabs."""
        needs_tabname = self.show(True) == self.show(False)
        tabname = f"{'img2img' if self.is_img2img else 'txt2img'}_" if needs_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data: list[ScriptClassData] = []
postprocessing_scripts_data: list = []
scripts_txt2img: "ScriptRunner | None" = None
scripts_img2img: "ScriptRunner | None" = None
scripts_postproc = None
scripts_current: "ScriptRunner | None" = None
current_basedir = paths.script_path


def basedir() -> str:
    """The folder of the extension whose script is being imported (the install dir for root scripts)."""
    return current_basedir


@dataclass
class _ScriptEntry:
    """A script file with the names it must load before/after (metadata.ini), for the topological sort."""
    canonical_name: str
    file: ScriptFile
    extension: "extensions.Extension | None"
    requires: list
    load_before: list
    load_after: list


def list_script_files() -> list[_ScriptEntry]:
    """Root ``scripts/*.py`` (sorted), then each active extension's ``scripts/*.py``, ordered by metadata.ini."""
    entries = []
    root = os.path.join(paths.script_path, "scripts")
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if name.endswith(".py"):
                entries.append(_ScriptEntry(f"builtin/{name}", ScriptFile(paths.script_path, name, os.path.join(root, name)),
                                            None, [], [], []))
    for ext in extensions.active():
        for path in ext.list_files("scripts", ".py"):
            name = os.path.basename(path)
            relative = f"scripts/{name}"
            entries.append(_ScriptEntry(f"{ext.canonical_name}/{name}", ScriptFile(ext.path, name, path), ext,
                                        ext.script_requirements("Requires", relative),
                                        ext.script_requirements("Before", relative),
                                        ext.script_requirements("After", relative)))
    return _topological_order(entries)


def _topological_order(entries: list[_ScriptEntry]) -> list[_ScriptEntry]:
    """Keep the listing order except where Requires/After/Before say otherwise. A name in those lists is a script
    (``<extension>/<file>.py``) or a whole extension. Scripts whose requirement is missing are skipped."""
    by_extension: dict[str, list[str]] = {}
    for entry in entries:
        if entry.extension is not None:
            by_extension.setdefault(entry.extension.canonical_name, []).append(entry.canonical_name)
    known = {e.canonical_name for e in entries}

    def expand(names: list[str]) -> list[str]:
        out = []
        for name in names:
            out += by_extension.get(name, [name] if name in known else [])
        return out

    usable = []
    for entry in entries:
        missing = [r for r in entry.requires if r not in known and r not in by_extension]
        if missing:
            message = f"script {entry.file.filename} skipped: it requires {', '.join(missing)}"
            errors.report(f"Extension {entry.extension.name if entry.extension else 'scripts'}: {message}")
            if entry.extension is not None:
                entry.extension.errors.append(message)
            continue
        usable.append(entry)
    names = [e.canonical_name for e in usable]
    after: dict[str, set[str]] = {n: set() for n in names}
    for entry in usable:
        for dependency in expand(entry.requires) + expand(entry.load_after):
            if dependency in after and dependency != entry.canonical_name:
                after[entry.canonical_name].add(dependency)
        for dependent in expand(entry.load_before):
            if dependent in after and dependent != entry.canonical_name:
                after[dependent].add(entry.canonical_name)
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:  # depth first, in listing order, as A1111 sorts
        if name in ordered:
            return
        if name in visiting:
            errors.report(f"metadata.ini ordering has a cycle through {name}; it is ignored there")
            return
        visiting.add(name)
        for dependency in [n for n in names if n in after[name]]:
            visit(dependency)
        visiting.discard(name)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        visit(name)
    by_name = {e.canonical_name: e for e in usable}
    return [by_name[n] for n in ordered]


def load_module(path: str):
    """Import a script file. Its module name is the file name, as in A1111 (extensions look up
    ``scripts_data`` entries by ``__module__ == "xyz_grid.py"``)."""
    module_name = os.path.basename(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_scripts() -> None:
    """Import the script classes of the listed extensions (``extensions.list_extensions``), timing each extension;
    a script that fails to import is reported with its extension's name and skipped."""
    global current_basedir, scripts_txt2img, scripts_img2img, scripts_current
    script_callbacks.clear_callbacks()
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    for entry in list_script_files():
        ext = entry.extension
        started = time.perf_counter()
        current_basedir = entry.file.basedir
        sys.path.insert(0, entry.file.basedir)
        try:
            module = load_module(entry.file.path)
        except Exception as e:
            owner = f"Extension {ext.name}" if ext else "Script"
            message = f"error loading {entry.file.filename}: {type(e).__name__}: {e}"
            errors.report(f"{owner}: {message}", exc_info=True)
            if ext is not None:
                ext.errors.append(message)
            module = None
        finally:
            sys.path.remove(entry.file.basedir)
            current_basedir = paths.script_path
            if ext is not None:
                ext.load_time += time.perf_counter() - started
        if module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, Script) and value is not Script \
                    and value.__module__ == module.__name__:
                scripts_data.append(ScriptClassData(value, entry.file.path, entry.file.basedir, module))
    scripts_txt2img = ScriptRunner(is_img2img=False)
    scripts_img2img = ScriptRunner(is_img2img=True)
    scripts_current = None


def reload_scripts() -> None:
    """Rescan the extension folders (settings and flags decide which are active), then load their scripts."""
    if scripts_txt2img is not None:  # scripts were loaded before: this is a reload
        script_callbacks.before_reload_callback()
    script_callbacks.script_unloaded_callback()
    extensions.list_extensions()
    load_scripts()


def announce_components(page, tabs: dict) -> None:
    """Call the component hooks (``on_before_component``/``on_after_component`` callbacks and the scripts'
    ``before_component``/``after_component``) for every component of the built ``page``, in creation order.

    A1111 calls them while each component is created, by patching Gradio; without patching they run once the page
    exists (still inside its Blocks, so event listeners can be added). Components a hook creates are therefore
    not placed next to the one announced. ``tabs`` maps "txt2img"/"img2img" to their tab blocks: a tab's
    components also go to that tab's scripts, as in A1111."""
    import gradio as gr

    def walk(block):
        for child in getattr(block, "children", None) or []:
            yield child
            yield from walk(child)

    owners = {id(c): runner for name, runner in (("txt2img", scripts_txt2img), ("img2img", scripts_img2img))
              if runner is not None and name in tabs for c in walk(tabs[name])}
    components = sorted((c for c in walk(page) if isinstance(c, gr.components.Component)), key=lambda c: c._id)
    for component in components:
        kwargs = {"elem_id": component.elem_id, "label": getattr(component, "label", None),
                  "value": getattr(component, "value", None)}
        runner = owners.get(id(component))
        script_callbacks.before_component_callback(component, **kwargs)
        if runner is not None:
            runner.before_component(component, **kwargs)
        script_callbacks.after_component_callback(component, **kwargs)
        if runner is not None:
            runner.after_component(component, **kwargs)


def extension_of(data: ScriptClassData) -> str:
    """The folder name of the extension a script class comes from ("scripts" for the install dir's own)."""
    return "scripts" if data.basedir == paths.script_path else os.path.basename(data.basedir)


def _component_default(component) -> Any:
    """The value a control passes to the script when the user leaves it alone: the choice's index for
    ``type="index"`` radios and dropdowns, else the component's value."""
    value = getattr(component, "value", None)
    choices = getattr(component, "choices", None)
    if getattr(component, "type", None) == "index" and choices:
        names = [c[1] if isinstance(c, (tuple, list)) else c for c in choices]
        return names.index(value) if value in names else None
    return value


class ScriptRunner:
    """The scripts of one tab, their controls' slice of the flat argument list, and the hook calls."""

    def __init__(self, is_img2img: bool = False):
        self.is_img2img = is_img2img
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.inputs: list | None = None
        self.default_args: list | None = None
        self.dropdown = None
        self.initialize_scripts()

    def initialize_scripts(self) -> None:
        tabname = "img2img" if self.is_img2img else "txt2img"
        for data in scripts_data:
            try:
                script = data.script_class()
                script.filename = data.path
                script.extension_name = extension_of(data)
                script.is_txt2img, script.is_img2img, script.tabname = not self.is_img2img, self.is_img2img, tabname
                visibility = script.show(self.is_img2img)
                title = script.title()
            except Exception as e:
                errors.report(f"Extension {extension_of(data)}: script {data.script_class.__name__} cannot be "
                              f"created: {type(e).__name__}: {e}", exc_info=True)
                continue
            script.name = title.lower()
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)
            elif visibility:
                self.selectable_scripts.append(script)
            else:
                continue
            self.scripts.append(script)
            self.title_map[script.name] = script
        self.titles = [s.title() for s in self.selectable_scripts]

    def script(self, title: str) -> Script | None:
        return self.title_map.get(title.lower())

    # --- UI -------------------------------------------------------------------------------------------------

    def setup_ui(self) -> list:
        """Build every script's controls in the current Gradio context: always-on scripts first, then the Script
        dropdown and one hidden group per selectable script (shown when selected). Returns the flat input list
        whose first entry is the dropdown (0 = None)."""
        import gradio as gr

        from modules import upscaler

        upscaler.all_upscalers()  # scripts build their upscaler choices from shared.sd_upscalers
        self.inputs = [None]
        self.infotext_fields, self.paste_field_names = [], []
        for script in self.alwayson_scripts:
            with gr.Group(elem_id=f"{self._tab}_script_container_{len(self.inputs)}") as group:
                self._create_script_ui(script)
            script.group = group
        self.dropdown = gr.Dropdown(["None", *self.titles], value="None", type="index", label="Script",
                                    elem_id=f"{self._tab}_script_dropdown")
        self.inputs[0] = self.dropdown
        self.infotext_fields.append((self.dropdown, self._pasted_script))
        for script in self.selectable_scripts:
            with gr.Group(visible=False, elem_id=f"{self._tab}_script_{script.elem_id('group')}") as group:
                self._create_script_ui(script)
            script.group = group
        groups = [s.group for s in self.selectable_scripts]
        if groups:
            self.dropdown.change(lambda index: [gr.update(visible=index == i + 1) for i in range(len(groups))],
                                 [self.dropdown], groups, queue=False, show_progress="hidden")
        self.default_args = [0] + [_component_default(c) for c in self.inputs[1:]]
        return self.inputs

    def _pasted_script(self, params: dict):
        """The Script dropdown after a paste: the infotext's ``Script`` when this tab has it, else None."""
        import gradio as gr

        title = params.get("Script")
        if title is None:
            return gr.update(value="None")
        return gr.update(value=title) if title in self.titles else gr.skip()

    @property
    def _tab(self) -> str:
        return "img2img" if self.is_img2img else "txt2img"

    def _create_script_ui(self, script: Script) -> None:
        script.args_from = len(self.inputs)
        try:
            controls = script.ui(self.is_img2img) or []
        except Exception as e:
            errors.report(f"Extension {script.extension_name}: {script.title()} ui() failed: {type(e).__name__}: {e}",
                          exc_info=True)
            controls = []
        script.controls = list(controls)
        self.inputs.extend(script.controls)
        script.args_to = len(self.inputs)
        self.infotext_fields += list(script.infotext_fields or [])
        self.paste_field_names += list(script.paste_field_names or [])

    def before_component(self, component, **kwargs) -> None:
        self._component_hooks("before", component, kwargs)

    def after_component(self, component, **kwargs) -> None:
        self._component_hooks("after", component, kwargs)

    def _component_hooks(self, when: str, component, kwargs: dict) -> None:
        """A script's ``on_<when>_component`` callbacks for this elem_id, then its ``<when>_component``; a failure
        is reported with the extension's name and the other scripts still run."""
        for script in self.scripts:
            callbacks = [cb for elem_id, cb in getattr(script, f"on_{when}_component_elem_id") or []
                         if elem_id == kwargs.get("elem_id")]
            try:
                for callback in callbacks:
                    callback(OnComponent(component=component))
                getattr(script, f"{when}_component")(component, **kwargs)
            except Exception as e:
                errors.report(f"Extension {script.extension_name}: {script.title()} {when}_component failed: "
                              f"{type(e).__name__}: {e}", exc_info=True)

    def ensure_args(self) -> list:
        """Every script's default argument values, building the controls in a detached Gradio context when the
        page has not built them (API-only server, tests)."""
        if self.default_args is None:
            import gradio as gr

            with gr.Blocks():
                self.setup_ui()
        return list(self.default_args)

    # --- arguments from requests ----------------------------------------------------------------------------

    def build_args(self, script_name: str | None = None, script_args: list | dict | None = None,
                   alwayson_scripts: dict | None = None, infotext_params: dict | None = None) -> list:
        """The flat argument list of a request: defaults for every script, the selected script's ``script_args``
        (a list in the order of its controls, or an object keyed by control label or elem_id) and each
        ``alwayson_scripts[title]["args"]`` (a shorter list replaces only a prefix); always-on scripts the request
        does not name take their arguments from the request's parsed infotext where they read it
        (``args_from_infotext``). Titles match case-insensitively; unknown titles and too many arguments raise
        ``UserInputError``."""
        args = self.ensure_args()
        if infotext_params:
            named = {str(title).lower() for title in alwayson_scripts or {}}
            for script in self.alwayson_scripts:
                if script.title().lower() not in named:
                    values = script.args_from_infotext(infotext_params)
                    if values is not None:
                        self._place(args, script, values, f"infotext ({script.title()})")
        if script_name:
            script = self.script(script_name)
            if script is None or script.alwayson:
                known = ", ".join(self.titles) or "none"
                raise UserInputError(f"Script '{script_name}' not found; selectable scripts: {known}")
            args[0] = self.selectable_scripts.index(script) + 1
            self._place(args, script, script_args or [], "script_args")
        elif script_args:
            raise UserInputError("script_args given without script_name")
        for title, entry in (alwayson_scripts or {}).items():
            script = self.script(title)
            if script is None:
                known = ", ".join(s.title() for s in self.alwayson_scripts) or "none"
                raise UserInputError(f"alwayson_scripts: script '{title}' not found; always-on scripts: {known}")
            if not script.alwayson:
                raise UserInputError(f"alwayson_scripts: '{title}' is a selectable script; pass it as script_name")
            values = entry.get("args", []) if isinstance(entry, dict) else entry
            self._place(args, script, values, f"alwayson_scripts['{title}'].args")
        return args

    def _place(self, args: list, script: Script, values: list | dict, field: str) -> None:
        count = script.args_to - script.args_from
        if isinstance(values, dict):
            names = {}
            for i, control in enumerate(script.controls):
                for key in (getattr(control, "label", None), getattr(control, "elem_id", None)):
                    if key:
                        names[str(key).lower()] = i
            for key, value in values.items():
                if str(key).lower() not in names:
                    raise UserInputError(f"{field}: {script.title()} has no argument {key!r}; "
                                         f"arguments: {', '.join(sorted(names))}")
                args[script.args_from + names[str(key).lower()]] = value
            return
        if not isinstance(values, (list, tuple)):
            raise UserInputError(f"{field} must be a list (or an object of named arguments)")
        if len(values) > count:
            raise UserInputError(f"{field}: {script.title()} takes {count} argument(s), got {len(values)}")
        args[script.args_from:script.args_from + len(values)] = list(values)

    # --- running -----------------------------------------------------------------------------------------------

    def attach(self, p, args: list | None = None) -> None:
        """Give ``p`` this runner and its arguments, then call the always-on scripts' ``setup``."""
        global scripts_current
        p.scripts = self
        p.script_args = list(args) if args is not None else self.ensure_args()
        scripts_current = self
        self._call_alwayson("setup", p)

    def run(self, p, *args):
        """Run the selected script (``args[0]`` is its 1-based index; 0 = none). None when no script is selected,
        so the caller runs ``process_images`` itself."""
        index = args[0] if args else 0
        if not index:
            return None
        if not isinstance(index, int) or not 0 < index <= len(self.selectable_scripts):
            raise UserInputError(f"script index {index!r} is out of range (1..{len(self.selectable_scripts)})")
        script = self.selectable_scripts[index - 1]
        try:
            return script.run(p, *args[script.args_from:script.args_to])
        except UserInputError as e:
            raise _named_error(script, e) from e
        except Exception as e:
            errors.report(f"Extension {script.extension_name}: script {script.title()} failed", exc_info=True)
            raise ScriptError(f"script {script.title()!r} of extension {script.extension_name!r} failed: "
                              f"{type(e).__name__}: {e}") from e

    def _call_alwayson(self, hook: str, p, *leading, **kwargs) -> None:
        """Call ``hook`` of every always-on script. Bad input (``UserInputError``) stops the job with the script's
        name in the message; any other failure is reported, noted in the infotext's comments, and the job goes on."""
        for script in self.alwayson_scripts:
            args = p.script_args[script.args_from:script.args_to] if script.args_from is not None else []
            try:
                getattr(script, hook)(p, *leading, *args, **kwargs)
            except UserInputError as e:
                raise _named_error(script, e) from e
            except Exception as e:
                message = f"Extension {script.extension_name}: {script.title()} {hook} failed: {type(e).__name__}: {e}"
                errors.report(message, exc_info=True)
                p.comment(message)

    def before_process(self, p) -> None:
        self._call_alwayson("before_process", p)

    def process(self, p) -> None:
        self._call_alwayson("process", p)

    def before_process_batch(self, p, **kwargs) -> None:
        self._call_alwayson("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs) -> None:
        self._call_alwayson("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs) -> None:
        self._call_alwayson("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs) -> None:
        self._call_alwayson("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p) -> None:
        self._call_alwayson("before_hr", p)

    def post_sample(self, p, ps: PostSampleArgs) -> None:
        self._call_alwayson("post_sample", p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs) -> None:
        self._call_alwayson("on_mask_blend", p, mba)

    def postprocess_batch(self, p, images, **kwargs) -> None:
        self._call_alwayson("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs) -> None:
        self._call_alwayson("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p, pp: PostprocessImageArgs) -> None:
        self._call_alwayson("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostprocessMaskOverlayArgs) -> None:
        self._call_alwayson("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs) -> None:
        self._call_alwayson("postprocess_image_after_composite", p, pp)

    def postprocess(self, p, processed) -> None:
        self._call_alwayson("postprocess", p, processed)


def runner_for(is_img2img: bool) -> ScriptRunner:
    """The tab's runner, loading the scripts on first use."""
    if scripts_txt2img is None:
        reload_scripts()
    return scripts_img2img if is_img2img else scripts_txt2img
