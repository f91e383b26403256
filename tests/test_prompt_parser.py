"""The prompt language as text: reference-a1111.md §8.3-8.7, acceptance examples verbatim, plus edge
cases and properties (never raises, linear-time on huge and deeply nested prompts)."""
import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.prompt_parser import (
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
    split_on_break,
    strip_comments,
)


def g(prompt, steps=10, hires_steps=None, old=False):
    return get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, old)[0]


# reference-a1111.md §8.4, verbatim
SCHEDULE_EXAMPLES = [
    ("test", [[10, 'test']]),
    ("a [b:3]", [[3, 'a '], [10, 'a b']]),
    ("a [b: 3]", [[3, 'a '], [10, 'a b']]),
    ("a [[[b]]:2]", [[2, 'a '], [10, 'a [[b]]']]),
    ("[(a:2):3]", [[3, ''], [10, '(a:2)']]),
    ("a [b : c : 1] d", [[1, 'a b  d'], [10, 'a  c  d']]),
    ("a [unbalanced", [[10, 'a [unbalanced']]),
    ("a [b:.5] c", [[5, 'a  c'], [10, 'a b c']]),
    ("[a|(b:1.1)]", [[1, 'a'], [2, '(b:1.1)'], [3, 'a'], [4, '(b:1.1)'], [5, 'a'], [6, '(b:1.1)'], [7, 'a'], [8, '(b:1.1)'], [9, 'a'], [10, '(b:1.1)']]),
    ("[fe|]male", [[1, 'female'], [2, 'male'], [3, 'female'], [4, 'male'], [5, 'female'], [6, 'male'], [7, 'female'], [8, 'male'], [9, 'female'], [10, 'male']]),
]

# reference-a1111.md §8.5, verbatim
ATTENTION_EXAMPLES = [
    ("normal text", [['normal text', 1.0]]),
    ("an (important) word", [['an ', 1.0], ['important', 1.1], [' word', 1.0]]),
    ("(unbalanced", [['unbalanced', 1.1]]),
    ("\\(literal\\]", [['(literal]', 1.0]]),
    ("(unnecessary)(parens)", [['unnecessaryparens', 1.1]]),
    ("a BREAK b", [['a', 1.0], ['BREAK', -1], ['b', 1.0]]),
]


@pytest.mark.parametrize("prompt,expected", SCHEDULE_EXAMPLES)
def test_reference_schedule_examples(prompt, expected):
    assert g(prompt) == expected


def test_reference_hires_example():
    assert g("a [b:.5] c", 10, 10) == [[10, 'a b c']]


@pytest.mark.parametrize("prompt,expected", ATTENTION_EXAMPLES)
def test_reference_attention_examples(prompt, expected):
    assert parse_prompt_attention(prompt) == expected


# Edge cases; expected values checked against A1111's lark grammar.
@pytest.mark.parametrize("prompt,expected", [
    ("a | [b:3]", [[10, 'a | [b:3]']]),  # a top-level | makes the prompt unparseable: verbatim
    ("trailing \\", [[10, 'trailing \\']]),  # so does a backslash escaping nothing
    ("(a [b:3]", [[3, '(a '], [10, '(a b']]),  # stray top-level bracket, element inside still works
    ("[a:b:c:3]", [[10, '[a:b:c:3]']]),
    ("[[a:3]:5]", [[3, ''], [5, ''], [10, 'a']]),
    ("[a:[b:3]:5]", [[3, 'a'], [5, 'a'], [10, 'b']]),
    ("[a:3]]", [[3, ']'], [10, 'a]']]),
    ("[[a:3]", [[3, '['], [10, '[a']]),
    ("(a:[b:3])", [[3, '(a:)'], [10, '(a:b)']]),
    ("[:3]", [[3, ''], [10, '']]),
    ("[a::-1]", [[10, '']]),
    ("[a:b:0]", [[10, 'b']]),
    ("[a:b:11]", [[10, 'a']]),
    ("[a:b:1e1]", [[10, 'a']]),
    ("[a:b: 3 ]", [[3, 'a'], [10, 'b']]),
    ("[a:b:+2]", [[2, 'a'], [10, 'b']]),
    ("(x:1.2) [a:b:5.]", [[10, '(x:1.2) a']]),
    ("[a|b|]c", [[1, 'ac'], [2, 'bc'], [3, 'c'], [4, 'ac'], [5, 'bc'], [6, 'c'], [7, 'ac'], [8, 'bc'], [9, 'c'], [10, 'ac']]),
    ("[a:b:3] and [c|d]", [[1, 'a and c'], [2, 'a and d'], [3, 'a and c'], [4, 'b and d'], [5, 'b and c'],
                           [6, 'b and d'], [7, 'b and c'], [8, 'b and d'], [9, 'b and c'], [10, 'b and d']]),
    ("[a:b:1e999]", [[10, 'a']]),  # A1111 crashes in int(inf); here the edit lands at the end
    # lark reads this as text because of a tie-break that depends on the parity of the stray run;
    # we always read the complete element (documented deviation)
    ("[a:3]]]", [[3, ']]'], [10, 'a]]']]),
])
def test_schedule_edge_cases(prompt, expected):
    assert g(prompt) == expected


@pytest.mark.parametrize("prompt,hires,old,expected", [
    ("[a:b:15]", 10, False, [[5, 'a'], [10, 'b']]),  # integers count from the start of the first pass
    ("[a:b:1.5]", 10, False, [[5, 'a'], [10, 'b']]),  # fractions address the hires pass in [1, 2]
    ("[a:b:5]", 10, False, [[10, 'b']]),  # a boundary inside the first pass is gone
    ("[a:b:1.25] [c|d]", 10, False, [[1, 'a c'], [2, 'a d'], [3, 'b c'], [4, 'b d'], [5, 'b c'], [6, 'b d'],
                                      [7, 'b c'], [8, 'b d'], [9, 'b c'], [10, 'b d']]),
    ("[a:b:0.5]", None, True, [[5, 'a'], [10, 'b']]),
    ("[a:b:1.5]", None, True, [[1, 'a'], [10, 'b']]),  # old timelines: >= 1 is absolute
    ("[a:b:1.5]", 10, True, [[1, 'a'], [10, 'b']]),
])
def test_hires_and_old_timelines(prompt, hires, old, expected):
    assert g(prompt, 10, hires, old) == expected


def test_identical_prompts_share_one_schedule():
    result = get_learned_conditioning_prompt_schedules(["a [b:3]", "c", "a [b:3]"], 10)
    assert result[0] is result[2] and result[1] == [[10, "c"]]


@pytest.mark.parametrize("prompt,expected", [
    ("((a))", [['a', 1.2100000000000002]]),
    ("[a]", [['a', 1 / 1.1]]),
    ("(a:1.5) b", [['a', 1.5], [' b', 1.0]]),
    ("(a:-0.5)", [['a', -0.5]]),
    ("((a:2):1.5)", [['a', 3.0]]),
    ("a:1.5)", [['a:1.5)', 1.0]]),  # no open bracket: literal
    ("a)]:", [['a)]:', 1.0]]),
    ("\\\\x\\y", [['\\xy', 1.0]]),  # escaped backslash kept, lone backslash dropped
    ("(\\(x\\))", [['(x)', 1.1]]),  # escapes are multiplied by enclosing brackets
    ("(a:1.2.3)", [['a:1.2.3', 1.1]]),  # A1111 raises ValueError here
    ("(a BREAK b)", [['a', 1.1], ['BREAK', -1], ['b', 1.1]]),  # deviation: the marker is not weighted
    ("a BREAKfast", [['a BREAKfast', 1.0]]),
    ("", [['', 1.0]]),
])
def test_attention_edge_cases(prompt, expected):
    assert parse_prompt_attention(prompt) == expected


@pytest.mark.parametrize("prompt,indexes,flat", [
    ("a cat AND a dog:0.5", [[(0, 1.0), (1, 0.5)]], ["a cat", " a dog"]),
    ("a AND b : -1.5  ", [[(0, 1.0), (1, -1.5)]], ["a", " b"]),
    ("sANDwich and ANDROID", [[(0, 1.0)]], ["sANDwich and ANDROID"]),
    ("time 12:30", [[(0, 30.0)]], ["time 12"]),  # A1111 quirk: any prompt ending in :number is weighted
    ("ratio :2.", [[(0, 2.0)]], ["ratio"]),
])
def test_and_splitting(prompt, indexes, flat):
    res, flat_list, _ = get_multicond_prompt_list([prompt])
    assert res == indexes and flat_list == flat


def test_and_subprompts_are_shared_across_the_batch():
    res, flat, index = get_multicond_prompt_list(["x AND y", "y AND x:2", "x"])
    assert flat == ["x", " y", "y", " x"] and res[2] == [(0, 1.0)] and index["y"] == 2


def test_strip_comments():
    assert strip_comments("# whole line\na cat # tail\nblue") == "\na cat \nblue"


# --- properties ---------------------------------------------------------------------------------

def naive_attention(text):
    """Per-character (char, weight) by A1111's quadratic rules, for comparison."""
    chars, weights, round_open, square_open = [], [], [], []
    token_re = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)|[)\]]|[^\\()\[\]:]+|:")
    for m in token_re.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            chars.extend(token[1:])
            weights.extend([1.0] * len(token[1:]))
        elif token in "([":
            (round_open if token == "(" else square_open).append(len(chars))
        elif weight is not None and round_open or token == ")" and round_open:
            start = round_open.pop()
            weights[start:] = [w * (float(weight) if weight is not None else 1.1) for w in weights[start:]]
        elif token == "]" and square_open:
            start = square_open.pop()
            weights[start:] = [w / 1.1 for w in weights[start:]]
        else:
            chars.extend(token)
            weights.extend([1.0] * len(token))
    for start in round_open:
        weights[start:] = [w * 1.1 for w in weights[start:]]
    for start in square_open:
        weights[start:] = [w / 1.1 for w in weights[start:]]
    return list(zip(chars, weights))


PIECES = list("[]():|\\ ab3.5-e\n,") + ["AND", "BREAK", ":0.5)", "[x:y:2]"]
prompt_text = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(PIECES), max_size=30).map("".join))


@settings(max_examples=400, deadline=None)
@given(prompt_text, st.integers(min_value=1, max_value=30))
def test_schedules_are_always_valid(prompt, steps):
    for hires in (None, steps):
        schedule = g(prompt, steps, hires)
        ends = [end for end, _ in schedule]
        assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1
        assert all(isinstance(text, str) for _, text in schedule)
    if not re.search(r"[\[\]()|\\]", prompt):
        assert g(prompt, steps) == [[steps, prompt]]


@settings(max_examples=400, deadline=None)
@given(prompt_text.filter(lambda p: "BREAK" not in p))
def test_attention_matches_the_per_character_rules(prompt):
    got = [(c, w) for text, w in parse_prompt_attention(prompt) for c in text]
    expected = naive_attention(prompt)
    assert [c for c, _ in got] == [c for c, _ in expected]
    assert all(math.isclose(a, b, rel_tol=1e-9) or a == b for (_, a), (_, b) in zip(got, expected))


def test_break_split_matches_the_reference_pattern():
    pattern = re.compile(r"\s*\bBREAK\b\s*", re.S)
    for text in ["a BREAK b", "BREAK", " BREAK  BREAK ", "xBREAK BREAKy", "a\nBREAK\nb", "BREAKBREAK", ""]:
        assert split_on_break(text) == pattern.split(text)


HUGE = {
    "nested brackets": "[" * 10_000 + "a" + "]" * 10_000,
    "nested schedules": "[" * 10_000 + "a" + ":1]" * 10_000,
    "nested parens": "(" * 10_000 + "a" + ")" * 10_000,
    "unclosed megabyte": "(a" * 500_000,
    "megabyte of spaces around AND and BREAK": " " * 500_000 + "AND BREAK" + " " * 500_000,
    "megabyte of schedules": "[a:b:3]" * 150_000,
    "megabyte of alternations": "[a|b]" * 200_000,
}


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_prompts_finish_quickly(name):
    prompt = HUGE[name]
    started = time.monotonic()
    schedule = g(prompt, 20)
    attention = parse_prompt_attention(prompt)
    get_multicond_prompt_list([prompt])
    assert time.monotonic() - started < 120, "parsing must stay roughly linear"
    assert schedule[-1][0] == 20 and attention and all(len(entry) == 2 for entry in attention)
