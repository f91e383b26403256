"""The A1111 prompt language as pure text functions (no torch): comments, ``AND``, prompt editing,
alternation and attention weights. The conditioning side lives in ``modules.engine.conditioning``.

A1111 parses schedules with a lark Earley grammar (reference-a1111.md §8.3). This module accepts
the same language with a single left-to-right pass and an explicit stack, so any input - deep
nesting, megabyte prompts - is handled in linear time without recursion and never raises:

- inside ``( )`` and ``[ ]`` every bracket must be part of a well-formed nested element, while at
  the top level stray ``[ ] ( ) :`` are plain text;
- an element that cannot be completed turns every still-open bracket into top-level text (the
  elements already completed inside keep their meaning);
- a ``|`` outside an alternation, or a backslash that escapes nothing (end of text or newline),
  makes the whole prompt unparseable, and it is then used verbatim for all steps.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Union

# --- comments ---------------------------------------------------------------------------------

_re_comment_line = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_re_comment_tail = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """Remove ``#`` comments: whole comment lines first, then ``#`` to the end of a line."""
    text = _re_comment_line.sub("\n", text)
    return _re_comment_tail.sub("\n", text)


# --- composable diffusion: AND ------------------------------------------------------------------

_re_and = re.compile(r"\bAND\b")
_re_subprompt_weight = re.compile(r"\s*[-+]?(?:\d+\.?|\d*\.\d+)")


def split_weighted_subprompt(text: str) -> tuple[str, float]:
    """``"a cat :1.5 "`` -> ``("a cat", 1.5)``. Leading spaces are kept, trailing ones stripped."""
    text = text.rstrip()
    colon = text.rfind(":")
    if colon >= 0 and _re_subprompt_weight.fullmatch(text, colon + 1):
        return text[:colon].rstrip(), float(text[colon + 1:])
    return text, 1.0


def get_multicond_prompt_list(prompts: list[str]):
    """Split each prompt on ``AND``. Returns (per prompt: [(index, weight)], flat list of distinct
    sub-prompts, {sub-prompt: index}); identical sub-prompts share one index across the batch."""
    res_indexes: list[list[tuple[int, float]]] = []
    prompt_flat_list: list[str] = []
    prompt_indexes: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for subprompt in _re_and.split(prompt):
            text, weight = split_weighted_subprompt(subprompt)
            index = prompt_indexes.get(text)
            if index is None:
                index = prompt_indexes[text] = len(prompt_flat_list)
                prompt_flat_list.append(text)
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


# --- prompt editing and alternation -------------------------------------------------------------

@dataclass
class _Scheduled:
    before: list
    after: list
    when_text: str


@dataclass
class _Alternate:
    options: list = field(default_factory=list)


@dataclass
class _Verbatim:
    """An emphasis group, kept with its brackets; a node rather than a copy keeps nesting linear."""
    items: list


_Item = Union[str, _Scheduled, _Alternate, _Verbatim]

_re_schedule_tokens = re.compile(r"\\.|\\|[\[\]():|]|[^\\\[\]():|]+")
_re_when = re.compile(r"\s*([+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+))\s*")


class _Frame:
    __slots__ = ("bracket", "segments", "separators")

    def __init__(self, bracket: str):
        self.bracket = bracket
        self.segments: list[list[_Item]] = [[]]
        self.separators: list[str] = []

    def close(self, bracket: str) -> list[_Item] | None:
        """The items this element becomes when closed by ``bracket``, or None if it is malformed."""
        seps = self.separators
        if "|" in seps and ":" in seps:
            return None
        if self.bracket == "(":
            if bracket != ")" or "|" in seps or len(seps) > 1:
                return None
            return self._verbatim(")")
        if bracket != "]":
            return None
        if not seps:
            return self._verbatim("]")
        if seps[0] == "|":
            return [_Alternate(self.segments)]
        if len(seps) > 2:
            return None
        last = self.segments[-1]
        if not all(isinstance(item, str) for item in last):
            return None
        match = _re_when.fullmatch("".join(last))
        if match is None:
            return None
        before = self.segments[0] if len(seps) == 2 else []
        return [_Scheduled(before, self.segments[-2], match.group(1))]

    def flatten(self) -> list[_Item]:
        """The opening bracket, then the segments joined by their separators."""
        items: list[_Item] = [self.bracket]
        for i, segment in enumerate(self.segments):
            if i:
                items.append(self.separators[i - 1])
            items.extend(segment)
        return items

    def _verbatim(self, closing: str) -> list[_Item]:
        return [_Verbatim(self.flatten() + [closing])]


def _parse_schedule_tree(text: str) -> list[_Item] | None:
    """Top-level items of ``text``, or None when A1111's grammar would reject it."""
    top: list[_Item] = []
    stack: list[_Frame] = []

    def collapse() -> bool:
        """Open brackets become top-level text; False if that exposes a ``|``."""
        ok = all("|" not in frame.separators for frame in stack)
        for frame in stack:
            top.extend(frame.flatten())
        stack.clear()
        return ok

    for match in _re_schedule_tokens.finditer(text):
        token = match.group(0)
        if token == "\\":
            return None  # a backslash must escape a character on the same line
        if token in ("[", "("):
            stack.append(_Frame(token))
        elif token in ("]", ")"):
            if stack:
                items = stack[-1].close(token)
                if items is None:
                    if not collapse():
                        return None
                    top.append(token)
                else:
                    stack.pop()
                    (stack[-1].segments[-1] if stack else top).extend(items)
            else:
                top.append(token)
        elif token in (":", "|"):
            if stack:
                stack[-1].separators.append(token)
                stack[-1].segments.append([])
            elif token == "|":
                return None
            else:
                top.append(token)
        else:
            (stack[-1].segments[-1] if stack else top).append(token)
    if stack and not collapse():
        return None
    return top


def _walk_nodes(items: list[_Item]):
    """Every schedule/alternation node, including those inside branches (no recursion)."""
    pending = [items]
    while pending:
        for item in pending.pop():
            if isinstance(item, _Scheduled):
                yield item
                pending.append(item.before)
                pending.append(item.after)
            elif isinstance(item, _Alternate):
                yield item
                pending.extend(item.options)
            elif isinstance(item, _Verbatim):
                pending.append(item.items)


def _render(items: list[_Item], step: int, when: dict[int, int]) -> str:
    out: list[str] = []
    pending = [iter(items)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, str):
                out.append(item)
                continue
            if isinstance(item, _Scheduled):
                chosen = item.before if step <= when[id(item)] else item.after
            elif isinstance(item, _Alternate):
                chosen = item.options[(step - 1) % len(item.options)]
            else:
                chosen = item.items
            pending.append(iter(chosen))
            break
        else:
            pending.pop()
    return "".join(out)


def _boundary(when_text: str, steps: int, int_offset: int, frac_offset: float, use_old_scheduling: bool) -> int:
    value = float(when_text)
    if use_old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in when_text:
        value = (value - frac_offset) * steps
    else:
        value = value - int_offset
    if math.isinf(value):  # "1e999": A1111 would crash in int(); the edit simply lands at an end
        return steps if value > 0 else -1
    return min(steps, int(value))


def get_learned_conditioning_prompt_schedules(prompts: list[str], base_steps: int, hires_steps: int | None = None,
                                              use_old_scheduling: bool = False) -> list[list[list]]:
    """For each prompt, ``[[end_step, text], ...]``: ``text`` is used while the 0-based model-call
    counter is <= ``end_step``. With ``hires_steps`` the schedule is that of the hires pass."""
    if hires_steps is None or use_old_scheduling:
        int_offset, frac_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, frac_offset, steps = base_steps, 1.0, hires_steps

    def get_schedule(prompt: str) -> list[list]:
        tree = _parse_schedule_tree(prompt)
        if tree is None:
            return [[steps, prompt]]
        boundaries = {steps}
        when: dict[int, int] = {}
        for node in _walk_nodes(tree):
            if isinstance(node, _Scheduled):
                when[id(node)] = _boundary(node.when_text, steps, int_offset, frac_offset, use_old_scheduling)
                if when[id(node)] >= 1:
                    boundaries.add(when[id(node)])
            else:
                boundaries.update(range(1, steps + 1))
        return [[t, _render(tree, t, when)] for t in sorted(boundaries)]

    cache = {prompt: get_schedule(prompt) for prompt in set(prompts)}
    return [cache[prompt] for prompt in prompts]


# --- attention weights --------------------------------------------------------------------------

_re_attention = re.compile(r"""
\\[()\[\]\\]
|\\
|[(\[]
|:\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)
|[)\]]
|[^\\()\[\]:]+
|:
""", re.X)
_re_break_word = re.compile(r"\bBREAK\b")

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_MARKER = ("BREAK", -1)


def split_on_break(text: str) -> list[str]:
    """Split on the word ``BREAK`` and the whitespace around it (A1111's ``\\s*\\bBREAK\\b\\s*``),
    scanning whitespace by hand because that regex backtracks quadratically on long blank runs."""
    parts, start = [], 0
    for match in _re_break_word.finditer(text):
        if match.start() < start:
            continue
        left, right = match.start(), match.end()
        while left > start and text[left - 1].isspace():
            left -= 1
        while right < len(text) and text[right].isspace():
            right += 1
        parts.append(text[start:left])
        start = right
    parts.append(text[start:])
    return parts


def parse_prompt_attention(text: str) -> list[list]:
    """``"an (important) word"`` -> ``[['an ', 1.0], ['important', 1.1], [' word', 1.0]]``.

    ``BREAK`` becomes ``['BREAK', -1]``. One deliberate deviation from A1111: brackets do not multiply
    that marker, so ``(a BREAK b)`` still breaks the chunk (A1111 turns it into the weighted word).
    Weights are products of the enclosing brackets' multipliers, computed in one sweep so the work
    stays linear however deep the nesting.
    """
    entries: list[str | None] = []  # None marks a BREAK
    ranges: list[tuple[int, int, float, int]] = []  # (start, end, multiplier, kind 0=round 1=square)
    round_open: list[int] = []
    square_open: list[int] = []

    for match in _re_attention.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            entries.append(token[1:])
        elif token == "(":
            round_open.append(len(entries))
        elif token == "[":
            square_open.append(len(entries))
        elif weight is not None and round_open:
            ranges.append((round_open.pop(), len(entries), float(weight), 0))
        elif token == ")" and round_open:
            ranges.append((round_open.pop(), len(entries), ROUND_MULTIPLIER, 0))
        elif token == "]" and square_open:
            ranges.append((square_open.pop(), len(entries), SQUARE_MULTIPLIER, 1))
        else:
            for i, part in enumerate(split_on_break(token)):
                if i:
                    entries.append(None)
                entries.append(part)
    ranges += [(start, len(entries), ROUND_MULTIPLIER, 0) for start in round_open]
    ranges += [(start, len(entries), SQUARE_MULTIPLIER, 1) for start in square_open]

    weights = _range_products(len(entries), ranges)
    runs: list[tuple[list[str], float]] = []  # adjacent entries of equal weight, joined at the end
    for entry, weight in zip(entries, weights):
        if entry is None:
            runs.append(([BREAK_MARKER[0]], BREAK_MARKER[1]))
            runs.append(([], math.nan))  # nothing merges into a BREAK
        elif runs and runs[-1][1] == weight:
            runs[-1][0].append(entry)
        else:
            runs.append(([entry], weight))
    return [["".join(parts), weight] for parts, weight in runs if parts] or [["", 1.0]]


def _range_products(count: int, ranges: list[tuple[int, int, float, int]]) -> list[float]:
    """Weight of each entry = product of the multipliers of the ranges covering it. Ranges of one
    kind nest, so a stack per kind holding running products gives every weight in one pass."""
    starts: dict[int, list[tuple[int, float, int]]] = {}
    for start, end, multiplier, kind in sorted(ranges, key=lambda r: (r[0], -r[1])):
        if end > start:
            starts.setdefault(start, []).append((end, multiplier, kind))
    stacks: tuple[list, list] = ([(count + 1, 1.0)], [(count + 1, 1.0)])
    weights = []
    for position in range(count):
        for stack in stacks:
            while stack[-1][0] <= position:
                stack.pop()
        for end, multiplier, kind in starts.get(position, ()):
            stacks[kind].append((end, stacks[kind][-1][1] * multiplier))
        weights.append(1.0 * stacks[0][-1][1] * stacks[1][-1][1])
    return weights
