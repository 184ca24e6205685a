"""The main job's baselines: always the most common answer, the most common answer per question type, and
for pointing always pointing at nothing."""
import numpy as np
import pytest

from data_pipelines import synthetic
from experiments import controls
from molmo_jax.eval import runner
from molmo_jax.recipes import stage2


def result(pairs, task="synthetic_cap_qa"):
    return {"task": task, "predictions": [{"prompt": p, "reference": {"answer": a}} for p, a in pairs]}


def test_question_prior_is_the_per_question_type_majority():
    r = result([("synthetic_qa: How many circles are there?", "2"), ("How many circles?", "2"),
                ("synthetic_qa: How many squares are there?", "0"), ("What color is the square?", "red"),
                ("What color are the squares?", "red"), ("What color is the circle?", "blue")])
    assert controls.majority_baseline(r) == 2 / 6  # "2" or "red"
    assert controls.majority_baseline(r, controls.question_type) == 1.0  # each (shape, colour?) group has one answer
    assert controls.question_type("pixmo_docs_charts: What is the value of B?") == ("What is the value of B?",)
    assert controls.question_type("point_count: How many red circles are there?") == ("circle", False, "red")
    assert controls.question_type("What color is the square?") == ("square", True, None)
    points = {"task": "synthetic_points", "predictions": [{"prompt": "Point to circles", "reference": {"points": p}}
                                                          for p in ([], [[1.0, 2.0]], [], [[3.0, 4.0], [5.0, 6.0]])]}
    assert controls.majority_baseline(points) == 0.5  # pointing at nothing scores F1 1 on the two empty golds


def test_swapped_images_keep_the_prompt_and_change_the_picture():
    source = synthetic.held_out_source("synthetic_count")
    swapped = controls.SwappedImages(source)
    rng = lambda: np.random.RandomState(3)
    original, changed = source.get(2, rng()), swapped.get(2, rng())
    assert len(swapped) == len(source) and original["label"] == changed["label"]
    assert np.array_equal(changed["image"], source.get(9, rng())["image"])
    assert not np.array_equal(changed["image"], original["image"])


def test_point_landing_counts_points_on_the_asked_kind_another_kind_and_the_background():
    source = synthetic.held_out_source("synthetic_points", style=synthetic.SceneStyle((1 / 8, 1 / 6), 2))
    index = next(i for i in range(50) if len({s.kind for s in source_scene(source, i)}) >= 2)
    shapes = source_scene(source, index)
    asked = shapes[0].kind
    other = next(s for s in shapes if s.kind != asked)
    centre = lambda s: [s.x, s.y]
    assert source.kinds_at(index, np.array([centre(s) for s in shapes])) == [s.kind for s in shapes]
    background = next([x, y] for x in range(112) for y in range(112)
                      if source.kinds_at(index, np.array([[x, y]])) == [None])
    prediction = {"example": index, "prompt": f"Point to {asked}s", "points": [centre(shapes[0]), centre(other),
                                                                                 background, background]}
    landing = controls.point_landing(source, {"predictions": [prediction]})
    assert landing == {"asked_kind": 0.25, "other_kind": 0.25, "background": 0.5}
    # chance: the same points read in the scene of example index + SWAP_SHIFT
    elsewhere = dict(prediction, example=index + controls.SWAP_SHIFT)
    assert (controls.point_landing(source, {"predictions": [prediction]}, controls.SWAP_SHIFT)
            == controls.point_landing(source, {"predictions": [elsewhere]}) != landing)


def test_landing_line_says_so_when_no_answer_held_a_point():
    from experiments import main
    source = synthetic.held_out_source("synthetic_points")
    nowhere = controls.point_landing(source, {"predictions": [{"example": 0, "prompt": "Point to circles",
                                                                 "points": []}]})
    summary = {"eval": {"synthetic_points": {"point_landing": nowhere, "point_landing_chance": nowhere}}}
    assert main.landing_line(summary) == "No pointing answer held a point, so none landed anywhere."


def source_scene(source, index):
    return synthetic.random_scene(synthetic.task_rng(source.seed, source.task, index), source.image_size, source.style)


def test_cell_oracle_scores_the_gold_points_one_and_coarser_cells_less():
    """The oracle answering the gold points scores F1 1; answering the centre of each point's grid cell loses
    the shapes whose painted pixels miss that centre, more the coarser the grid; the empty prompts score 1."""
    cfg = stage2.get_config("lite")
    source = synthetic.config_held_out_source("synthetic_points", cfg.data)
    formatter = runner.prompt_formatter(cfg.model)
    f1 = {cells: controls.cell_oracle_f1(source, formatter, 12, cells) for cells in (None, 8, 4, 1)}
    empty = np.mean([len(it.reference["points"]) == 0
                     for it in runner.eval_items(source, runner.resolve_task("synthetic_points"), 12, formatter)])
    assert f1[None] == pytest.approx(1.0)
    assert 1.0 >= f1[8] > f1[4] > f1[1] >= empty > 0
    assert f1[1] < 0.6  # every point at the image's centre


def test_set_changes_both_stages_or_one_and_names_a_bad_item():
    from experiments import main
    from molmo_jax import config as config_lib
    from molmo_jax.recipes import stage1

    fresh = lambda: {"stage1": stage1.get_config("lite"), "stage2": stage2.get_config("lite")}
    cfgs = fresh()
    main.apply_overrides(cfgs, ["model.llm.n_layers=8", "stage2.optim.lr.vit=0.0", "model.connector.pooling=attention"])
    assert [c.model.llm.n_layers for c in cfgs.values()] == [8, 8]
    assert [c.optim.lr.vit for c in cfgs.values()] == [fresh()["stage1"].optim.lr.vit, 0.0]
    assert [c.model.connector.pooling for c in cfgs.values()] == ["attention", "attention"]
    for item, message in [("model.llm.n_layer=8", "the stage1 config has no field 'model.llm.n_layer'"),
                          ("stage2.optim.lr.llm", "expected KEY=VALUE"),
                          ("model.llm.n_layers=eight", "cannot be casted")]:
        with pytest.raises(ValueError, match=message):
            main.apply_overrides(fresh(), [item])
    with pytest.raises(config_lib.ConfigError, match="must divide llm.n_heads=3"):
        main.apply_overrides(fresh(), ["model.llm.n_heads=3"])


def test_position_readout_locates_a_lone_shape_from_the_mean_image_token():
    """At init (fan-in ViT and connector) the mean image token already says where a lone shape is (R^2 0.48),
    far better than answering the mean centre."""
    import flax.linen as nn
    import jax

    from molmo_jax import api
    from molmo_jax.models.molmo import init_params
    from molmo_jax.preprocess import Preprocessor
    from molmo_jax.recipes import lite
    from molmo_jax.tokenizer import load_tokenizer

    cfg = lite.model_config()
    tokenizer = load_tokenizer("tests/fixtures/molmo_ref/qwen2_7b_d/tokenizer.json", cfg.llm.vocab_size)
    bundle = api.MolmoBundle(cfg, nn.meta.unbox(init_params(cfg, jax.random.key(0))), tokenizer,
                             Preprocessor(cfg, tokenizer))
    r = controls.position_readout(bundle, synthetic.SceneStyle((1 / 8, 1 / 6), 2, True), n=200, fit=150)
    assert 0.2 < r["r2"] < 1 and r["median_error_px"] < 0.75 * r["mean_centre_median_error_px"]
    assert r["within_radius"] > 2 * r["mean_centre_within_radius"]
