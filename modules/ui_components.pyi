"""A1111 ``modules.ui_components``: the small Gradio helpers extensions build their ``ui()`` with."""
from __future__ import annotations

import gradio as gr

from gradio.events import Dependency

class ToolButton(gr.Button):
    """A small square button (icons such as 🔄)."""

    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], min_width=kwargs.pop("min_width", 40), **kwargs)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormRow(gr.Row):
    """A row of form controls."""
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormColumn(gr.Column):
    """A column of form controls."""
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormGroup(gr.Group):
    """A group of form controls."""
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class InputAccordion(gr.Checkbox):
    """A checkbox that is also an accordion: ``with InputAccordion(False, label="My feature") as enabled:``
    builds the accordion's content, and ``enabled`` is the checkbox (its value is what the script receives)."""

    def __init__(self, value: bool = False, **kwargs):
        self.accordion_label = kwargs.get("label", "")
        self.accordion_open = kwargs.pop("open", bool(value))
        super().__init__(value, render=False, **kwargs)
        self.accordion = None

    def __enter__(self):
        self.accordion = gr.Accordion(self.accordion_label, open=self.accordion_open,
                                      elem_id=f"{self.elem_id}-accordion" if self.elem_id else None)
        self.accordion.__enter__()
        self.render()
        return self

    def __exit__(self, *exc):
        self.accordion.__exit__(*exc)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component