"""The main job's baselines: always the most common answer, and the most common answer per question type."""
from experiments import main


def result(pairs, task="synthetic_cap_qa"):
    return {"task": task, "predictions": [{"prompt": p, "reference": {"answer": a}} for p, a in pairs]}


def test_question_prior_is_the_per_question_type_majority():
    r = result([("synthetic_qa: How many circles are there?", "2"), ("How many circles?", "2"),
                ("synthetic_qa: How many squares are there?", "0"), ("What color is the square?", "red"),
                ("What color are the squares?", "red"), ("What color is the circle?", "blue")])
    assert main.majority_baseline(r) == 2 / 6  # "2" or "red"
    assert main.majority_baseline(r, main.question_type) == 1.0  # each (shape, colour?) group has one answer
    assert main.question_type("pixmo_docs_charts: What is the value of B?") == ("What is the value of B?",)
    assert main.majority_baseline(result([("x", "1")], task="synthetic_points")) is None
