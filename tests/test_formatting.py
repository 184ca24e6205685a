"""Prompt formatting, point / count text and the point parser (official DataFormatter + extract_points)."""
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmo_jax import formatting

FIXTURES = os.environ.get("MOLMO_FIXTURES", os.path.join(os.path.dirname(__file__), "fixtures", "molmo_ref"))
RELEASED = formatting.Formatter(prompt_type="uber_model", message_formatting="role", system_prompt_kind="demo_or_style",
                                always_start_with_space=True)


def _fixture_cases():
    for fixture in sorted(os.listdir(FIXTURES)):
        cases = os.path.join(FIXTURES, fixture, "cases")
        for case in sorted(os.listdir(cases)) if os.path.isdir(cases) else ():
            path = os.path.join(cases, case, "case.json")
            with open(path) as f:
                meta = json.load(f)
            if "answer" in meta:
                yield meta


ANSWERS = {m["answer"] for m in _fixture_cases()}


def _point_answer(n_points: int) -> str:
    matches = [a for a in ANSWERS if a.count(' x="') == n_points and a.startswith("<point")]
    assert matches, "fixtures have no single-point answer"
    return matches[0]


def test_single_point_matches_fixture_answer():
    answer = _point_answer(1)
    x, y, label = re.match(r'<point x="([\d.]+)" y="([\d.]+)" alt="([^"]+)">', answer).groups()
    assert formatting.points_to_text([[float(x), float(y)]], 100, label, label) == answer
    w, h = 640, 480  # the same point given in pixels of some image
    px = [[float(x) * w / 100, float(y) * h / 100]]
    assert formatting.points_to_text(np.array(px), [w / 100, h / 100], label, label) == answer
    np.testing.assert_allclose(formatting.extract_points(answer, w, h), px)


def test_no_points_text_matches_fixture():
    assert formatting.NO_POINTS_TEXT in ANSWERS
    example = {"points": [], "style": "pointing", "label": "Dog"}
    assert formatting.Formatter.format_points(example) == formatting.NO_POINTS_TEXT
    assert len(formatting.extract_points(formatting.NO_POINTS_TEXT, 100, 100)) == 0


def test_several_points_format_sorted_by_x_then_y():
    pts = np.array([[70.0, 10.0], [20.04, 90.0], [20.0, 30.0]])
    text = formatting.points_to_text(pts, 100, "mugs", "a mug")
    assert text == ('<points x1="20.0" y1="30.0" x2="20.0" y2="90.0" x3="70.0" y3="10.0" '
                    'alt="a mug">mugs</points>')


def test_point_count_text():
    example = {"points": np.array([[10.0, 20.0], [30.0, 40.0]]), "style": "point_count", "label": "Cats",
               "point_scale": 100}
    text = formatting.Formatter.format_points(example)
    assert text == ('Counting the <points x1="10.0" y1="20.0" x2="30.0" y2="40.0" alt="cats">cats</points> '
                    'shows a total of 2.')
    # pixel points use the image size
    example = {"points": np.array([[32.0, 24.0]]), "style": "point_count", "label": "cat",
               "image": np.zeros((48, 64, 3), np.uint8)}
    assert formatting.Formatter.format_points(example) == (
        'Counting the <point x="50.0" y="50.0" alt="cat">cat</point> shows a total of 1.')


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8),
       st.integers(1, 5000), st.integers(1, 5000))
def test_points_round_trip(fractions, w, h):
    """pixels -> text -> pixels keeps every point to the printed precision (0.1% of the image side)."""
    px = np.array(fractions) * [w, h]
    text = formatting.points_to_text(px, [w / 100, h / 100], "thing", "thing")
    parsed = formatting.extract_points(text, w, h)
    assert parsed.shape == px.shape
    pct = np.round(px / [w / 100, h / 100], 1)
    order = np.lexsort((pct[:, 1], pct[:, 0]))  # the text lists points by rounded x, then rounded y
    tol = np.array([w, h]) * (0.05 / 100) * (1 + 1e-9) + 1e-9
    assert np.all(np.abs(parsed - px[order]) <= tol), (parsed, px[order])


def test_extract_points_other_syntaxes():
    text = "Click(10.0, 20.0) and (30.5, 40.5) and p=123,456 and (150.0, 10.0)"
    pts = formatting.extract_points(text, 200, 100)
    # As officially: Click(...) also matches the "(x, y)" pattern (listed twice); >100 is dropped.
    np.testing.assert_allclose(pts, [[20, 20], [20, 20], [61, 40.5], [24.6, 45.6]])


def test_annotated_text():
    answer = "A <|POINT|> and B <|POINT|>."
    ann = [{"points": [[1.0, 2.0]], "inline_text": "x", "alt_text": "ax"},
           {"points": [[3.0, 4.0], [5.0, 6.0]], "inline_text": "y", "alt_text": "ay"}]
    out = formatting.Formatter.format_annotated_text(answer, ann)
    assert out == ('A <point x="1.0" y="2.0" alt="ax">x</point> and B '
                   '<points x1="3.0" y1="4.0" x2="5.0" y2="6.0" alt="ay">y</points>.')


def test_fixture_messages():
    for meta in _fixture_cases():
        msgs, _ = RELEASED({"prompt": meta["prompt"], "style": "demo", "text": meta["answer"]}, False, False,
                           np.random)
        assert msgs == meta["formatted_messages_train"]


@pytest.mark.parametrize("style,prefix", [("vqa2", "vqa2:"), ("eval_short_answer", "vqa2:"),
                                          ("eval_multiple_choice", "a_okvqa_mc:"), ("demo", ""),
                                          ("android_control", "")])
def test_style_prefixes(style, prefix):
    msgs, _ = RELEASED({"question": "What color?", "style": style}, False, True, np.random)
    assert msgs == [" User: " + (prefix + " " if prefix else "") + "What color? Assistant:"]


def test_demo_styles_prefix_ten_percent():
    rng = np.random.RandomState(0)
    prefixed = [RELEASED({"question": "q", "style": "user_qa"}, True, True, rng)[0][0].startswith(" User: user_qa:")
                for _ in range(2000)]
    assert 0.07 < np.mean(prefixed) < 0.13


def test_style_and_length_and_none():
    f = formatting.Formatter(system_prompt_kind="style_and_length", message_formatting="none")
    assert f({"question": "", "style": "long_caption"}, False, True, np.random)[0] == ["long_caption 65:"]
    rng = np.random.RandomState(1)
    text = "x" * 300
    prefixes = {f({"style": "long_caption", "text": text}, True, False, rng)[0][0] for _ in range(200)}
    assert "long_caption :" in prefixes
    assert all(re.fullmatch(r"long_caption( -?\d+)? ?:", p) for p in prefixes)
    plain = formatting.Formatter()
    assert plain({"question": "q", "answer": "a"}, True, False, np.random)[0] == ["q", " a"]


def test_uber_templates_and_options():
    rng = np.random.RandomState(0)
    msgs, _ = RELEASED({"style": "pointing", "label": "Red Cars", "points": np.zeros((0, 2))}, True, False, rng)
    templates = [t.replace("{label}", "red cars") for t in formatting.GENERAL_PROMPTS_V1["pointing"]]
    prompt = msgs[0][len(" User: "):-len(" Assistant:")]
    assert prompt.split("pointing: ")[-1] in templates and msgs[1] == " There are none."
    msgs, meta = RELEASED({"style": "a_okvqa_mc", "question": "Which?", "options": ["x", "y"], "answer_idx": 1},
                          True, False, rng)
    assert msgs == [" User: a_okvqa_mc: Which?\nA: x\nB: y\n Assistant:", " B"]
    assert meta["option_names"] == "AB"


def test_select_vqa_answer_most_frequent():
    f = formatting.Formatter()
    assert f.select_vqa_answer(["a", "b", "b", "c"], np.random) == "b"
    assert {f.select_vqa_answer(["a", "b"], np.random.RandomState(s)) for s in range(20)} == {"a", "b"}


def test_message_list():
    ex = {"style": "demo", "message_list": [{"prompt": "p1", "text": "a1", "style": "demo"},
                                            {"prompt": "p2", "text": "a2", "style": "vqa2"}]}
    msgs, meta = RELEASED(ex, True, False, np.random)
    assert msgs == [[" User: p1 Assistant:", " a1"], [" User: vqa2: p2 Assistant:", " a2"]] and meta is None
