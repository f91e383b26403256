"""The one compatibility layer for A1111 extensions written for Gradio 3 (A1111 v1.x pins Gradio 3.41).

Gradio 4 and later removed or renamed what many extensions' ``ui()`` methods use; :func:`install` teaches Gradio 6
those idioms, and nothing else of the project relies on it:

- ``tooltip=`` on any component (A1111 accepts it everywhere): kept as ``component.tooltip``; Gradio 6 has no hover
  text, so it is not shown.
- ``gr.Box``: a ``gr.Group``.
- ``component.style(...)``: the arguments Gradio 6 still has as constructor arguments (``height``, ``container``,
  ``equal_height``, ``size``, ``columns``; Gradio 3's ``grid`` is ``columns``) are applied, the others (``rounded``,
  ``margin``, ``full_width`` ...) ignored; returns the component, as in Gradio 3.
- ``gr.Textbox.update(...)`` and the like: ``gr.update(...)``.
- ``_js=`` on events and on ``.then``/``.success``: ``js=``.
- ``gr.Image(source=..., tool=...)`` (and Video, Audio): ``source`` becomes ``sources=[source]``; ``tool`` (Gradio 3's
  sketch and editor tools) and ``shape`` are dropped, as Gradio 6 has ``gr.ImageEditor`` for those.

It changes Gradio's classes in place (documented in docs/extensions.md), once, when the page is built and before the
extensions' UIs are.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

log = logging.getLogger("webui")

STYLE_RENAMES = {"grid": "columns"}
_MARK = "_a1111_compat"


def _accepted(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _translate_init_kwargs(cls: type, kwargs: dict) -> dict:
    """Gradio 3 constructor arguments -> Gradio 6 ones for ``cls``; what Gradio 6 accepts itself is left alone."""
    accepted = _accepted(cls)
    tooltip = kwargs.pop("tooltip", None) if "tooltip" not in accepted else None
    if "source" in kwargs and "source" not in accepted and "sources" in accepted:
        source = kwargs.pop("source")
        kwargs.setdefault("sources", [source] if isinstance(source, str) else source)
    for dropped in ("tool", "shape", "brush_radius"):
        if dropped in kwargs and dropped not in accepted:
            kwargs.pop(dropped)
    if tooltip is not None:
        kwargs["_compat_tooltip"] = tooltip
    return kwargs


def _wrap_init(cls: type) -> None:
    original = cls.__dict__["__init__"]
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        kwargs = _translate_init_kwargs(type(self), kwargs)
        tooltip = kwargs.pop("_compat_tooltip", None)
        original(self, *args, **kwargs)
        if tooltip is not None:
            self.tooltip = tooltip

    setattr(__init__, _MARK, True)
    cls.__init__ = __init__


def _wrap_event(cls: type, name: str) -> None:
    original = cls.__dict__.get(name)
    if original is None or not callable(original) or getattr(original, _MARK, False):
        return

    setattr(cls, name, _accept_js(original))


def _accept_js(listener: Any) -> Any:
    @functools.wraps(listener)
    def translated(*args, **kwargs):
        if "_js" in kwargs:
            kwargs.setdefault("js", kwargs.pop("_js"))
        return listener(*args, **kwargs)

    setattr(translated, _MARK, True)
    return translated


def _wrap_dependency(dependency_class: type) -> None:
    """``.then``/``.success``/``.failure`` are set on each Dependency when it is made."""
    original = dependency_class.__init__
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for name in ("then", "success", "failure"):
            if callable(getattr(self, name, None)):
                setattr(self, name, _accept_js(getattr(self, name)))

    setattr(__init__, _MARK, True)
    dependency_class.__init__ = __init__


def _style(self, **kwargs) -> Any:
    """Gradio 3's ``.style()``: the arguments that are still constructor arguments are applied."""
    accepted = _accepted(type(self))
    for name, value in kwargs.items():
        name = STYLE_RENAMES.get(name, name)
        if name in accepted and name not in ("self", "value"):
            setattr(self, name, value)
    return self


def _update(cls, **kwargs) -> dict:
    import gradio as gr

    return gr.update(**kwargs)


def _subclasses(root: type) -> list[type]:
    found, pending = [], [root]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return found


def install() -> None:
    """Teach Gradio 6 the Gradio 3 idioms above (idempotent)."""
    import gradio as gr
    from gradio import blocks, events

    if getattr(gr, _MARK, False):
        return
    if not hasattr(gr, "Box"):
        gr.Box = gr.Group
    blocks.Block.style = _style
    for cls in [blocks.Block, *_subclasses(blocks.Block)]:
        if "__init__" in cls.__dict__:
            _wrap_init(cls)
        if issubclass(cls, gr.components.Component) and "update" not in cls.__dict__:
            cls.update = classmethod(_update)
        for event in getattr(cls, "EVENTS", []):
            _wrap_event(cls, str(event))
        if "load" in cls.__dict__ and issubclass(cls, blocks.Blocks):
            _wrap_event(cls, "load")
    _wrap_dependency(events.Dependency)
    setattr(gr, _MARK, True)
    log.debug("Gradio 3 compatibility layer installed")
