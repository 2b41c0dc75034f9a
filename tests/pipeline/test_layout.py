"""RunLayout: the one naming of a run's folders (the paths the README and the report point to)."""

import json
from pathlib import Path

import pytest

from sfm.pipeline.layout import RunLayout


def test_quickstart_layout_names_the_paths_the_readme_points_to():
    run = RunLayout(Path("runs/quickstart"))
    assert run.model("diff") == Path("runs/quickstart/diff/model.pt")
    assert run.model("s2ef") == Path("runs/quickstart/s2ef/model.pt")
    assert run.training_records("diff") == Path("runs/quickstart/diff/metrics.jsonl")
    assert run.s2ef_eval() == Path("runs/quickstart/s2ef/eval_s2ef_val_id.json")
    assert run.samples("gen", "inpaint_ode") == Path("runs/quickstart/gen/inpaint_ode/samples")
    assert run.gen_metrics("gen", "csp_ode") == Path("runs/quickstart/gen/csp_ode/metrics.json")
    assert run.scores("score", "inpaint_ode") == Path("runs/quickstart/score/inpaint_ode/scores.json")
    assert run.table("quality", "gen") == Path("runs/quickstart/gen/quality.md")
    assert run.report_dir == Path("runs/quickstart/report")
    assert run.timings == Path("runs/quickstart/timings.jsonl")


def test_recipe_layouts_keep_their_model_folders():
    s2ef = RunLayout("runs/recipe_s2ef", s2ef=".")  # the S2EF recipe: the model in the run folder itself
    assert s2ef.model("s2ef") == Path("runs/recipe_s2ef/model.pt")
    assert s2ef.s2ef_eval("val_id") == Path("runs/recipe_s2ef/eval_s2ef_val_id.json")
    assert s2ef.is2re_eval == Path("runs/recipe_s2ef/eval_is2re.json")
    assert s2ef.mlsp("val_id") == Path("runs/recipe_s2ef/mlsp_val_id.json")
    assert s2ef.scores("place", "random") == Path("runs/recipe_s2ef/place/random/scores.json")
    assert s2ef.place_inputs == Path("runs/recipe_s2ef/place/inputs.lmdb")
    assert s2ef.random_placements == Path("runs/recipe_s2ef/place/random_samples.lmdb")
    diff = RunLayout("runs/recipe_diff_demo", diff="train")
    assert diff.model("diff") == Path("runs/recipe_diff_demo/train/model.pt")
    assert diff.table("quality_bar") == Path("runs/recipe_diff_demo/quality_bar.md")
    assert diff.paired("eval", "val_id") == Path("runs/recipe_diff_demo/eval/paired_val_id.json")
    with pytest.raises(ValueError, match="'diff' or 's2ef'"):
        diff.model("train")


def test_runs_lists_the_runs_of_a_group_that_have_the_file(tmp_path):
    run = RunLayout(tmp_path)
    for name in ("b", "a", "c"):
        run.run("gen", name).mkdir(parents=True)
    for name in ("b", "a"):
        run.gen_metrics("gen", name).write_text("{}")
    assert run.runs("gen", "metrics.json") == [run.gen_metrics("gen", "a"), run.gen_metrics("gen", "b")]
    assert run.runs("score", "scores.json") == []


def test_settings_round_trip_and_errors(tmp_path):
    RunLayout(tmp_path / "r", s2ef=".").write_settings("recipe_s2ef", {"demo_dir": "data/demo", "nproc": 2})
    layout, settings = RunLayout.read(tmp_path / "r")
    assert layout == RunLayout(tmp_path / "r", s2ef=".") and settings == {"demo_dir": "data/demo", "nproc": 2}
    assert json.loads((tmp_path / "r" / "pipeline.json").read_text())["pipeline"] == "recipe_s2ef"
    assert RunLayout.read(tmp_path / "none") == (RunLayout(tmp_path / "none"), {})  # a hand-made run folder
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pipeline.json").write_text('{"pipeline": "x"}')
    with pytest.raises(ValueError, match="bad/pipeline.json: not a pipeline settings record"):
        RunLayout.read(tmp_path / "bad")
