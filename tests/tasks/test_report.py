"""The report (sfm/tasks/report.py) on a tiny run folder made with the real commands (eval_s2ef, gen,
score) on a tiny checkpoint and the two-system demo world, plus trainer records of the real format."""

import json

import pytest

from sfm.tasks import eval_s2ef, gen, report, score
from tests.tasks.test_eval_s2ef import save_tiny


def records(path, parts):
    lines = []
    for step in range(1, 21):
        lines.append(
            {
                "split": "train",
                "step": step,
                "time": step * 0.5,
                "loss": 3.0 / step,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "structures_per_s": 5.0,
                **{p: 1.0 / step for p in parts},
            }
        )
        if step % 5 == 0:
            lines.append(
                {
                    "split": "valid",
                    "step": step,
                    "time": step * 0.5,
                    "loss": 3.5 / step,
                    "structures": 4,
                    "nonfinite_batches": 0,
                    **{p: 1.2 / step for p in parts},
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture(scope="module")
def run_dir(demo_world, tmp_path_factory):
    run = tmp_path_factory.mktemp("report_run") / "run"
    records(run / "diff" / "metrics.jsonl", ["coord", "lattice"])
    records(run / "s2ef" / "metrics.jsonl", ["energy", "force"])
    ckpt = save_tiny(run / "s2ef" / "model.pt", demo_world)
    eval_s2ef.main(
        [
            "--checkpoint",
            str(ckpt),
            "--data_path",
            str(demo_world / "s2ef_few" / "val_id"),
            "--json",
            str(run / "s2ef" / "eval_s2ef_val_id.json"),
            "--no_progress",
        ]
    )
    val = demo_world / "is2re" / "val_id"
    gen.main(
        [
            "--data_path",
            str(val),
            "--mode",
            "inpaint",
            "--sampler",
            "baseline_random",
            "--num_samples",
            "2",
            "--save_dir",
            str(run / "gen" / "inpaint_random"),
            "--no_progress",
        ]
    )
    score.main(
        [
            "--checkpoint",
            str(ckpt),
            "--samples",
            str(run / "gen" / "inpaint_random" / "samples"),
            "--reference",
            str(val),
            "--out",
            str(run / "score" / "inpaint_random"),
            "--steps",
            "2",
            "--judge",
            "emt",
            "--k",
            "1",
            "2",
            "--no_progress",
        ]
    )
    return run


def test_report_has_every_section(run_dir, demo_world):
    data = report.main(["--run_dir", str(run_dir), "--demo_dir", str(demo_world), "--val_max", "4", "--pictures", "2"])
    out = run_dir / "report"
    assert data["missing"] == []
    for png in ("train_diff.png", "train_s2ef.png", "parity_s2ef.png", "energy_hist.png", "structures.png"):
        assert (out / png).stat().st_size > 1000, png
    md = (out / "report.md").read_text()
    for png in ("train_diff.png", "parity_s2ef.png", "structures.png"):
        assert f"]({png})" in md
    js = json.loads((out / "report.json").read_text())
    sec = js["sections"]
    assert sec["training"]["diffusion"]["steps"] == 20
    assert sec["training"]["s2ef"]["last"]["train_loss"] == pytest.approx(3.0 / 20)
    parity = sec["s2ef"]["parity"]
    assert parity["structures"] == 4 and parity["energy_mae"] >= 0 and parity["force_mae"] >= 0
    assert f"energy MAE {parity['energy_mae']:.3f} eV" in md  # the page shows the numbers of report.json
    assert "inpaint_random" in sec["sampling"] and "inpaint_random" in sec["scoring"]
    summary = sec["scoring"]["inpaint_random"]["summary"]
    assert summary["samples"] == 4 and "success@2" in summary
    assert format(summary["success@2"], ".3f") in md
    assert sec["energy_histogram"]["inpaint_random"]["n"] == 4
    assert len(sec["pictures"]["structures"]) == 2


def test_missing_inputs_are_named_not_fatal(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    data = report.main(["--run_dir", str(tmp_path / "run")])
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert len(data["missing"]) >= 4 and md.count("_Missing:") == len(data["missing"])
    assert "diffusion training records" in md
    with pytest.raises(SystemExit):
        report.main(["--run_dir", str(tmp_path / "nope")])


def test_an_unreadable_input_fails_the_command_naming_it(tmp_path, capsys):
    """A corrupt metrics.jsonl (or metrics.json) is not a "missing" input: the report marks the
    section failed, keeps the others, and exits non-zero naming the file."""
    run = tmp_path / "run"
    records(run / "s2ef" / "metrics.jsonl", ["energy"])
    with open(run / "s2ef" / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 21, "loss": 0.1\n')  # cut short
    (run / "gen" / "broken").mkdir(parents=True)
    (run / "gen" / "broken" / "metrics.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--run_dir", str(run)])
    message = str(exit_info.value.code)
    assert "training: ValueError: " in message and "metrics.jsonl line 25: not a JSON record" in message
    assert "sampling: ValueError: " in message and "broken/metrics.json: unreadable (JSONDecodeError" in message
    md = (run / "report" / "report.md").read_text()
    assert md.count("_Failed:") == 2 and "_Missing:" in md  # the other sections are still there
    assert json.loads((run / "report" / "report.json").read_text())["failed"][0].startswith("training")


def test_stage_times_and_demo_world_come_from_the_pipeline_records(tmp_path):
    """The report takes the stage times from timings.jsonl (the last run that did the work) and the
    demo world from pipeline.json, as the pipelines write them."""
    from sfm.pipeline.layout import RunLayout

    run = RunLayout(tmp_path / "run")
    run.write_settings("quickstart", {"demo_dir": str(tmp_path / "no_demo")})
    lines = [
        {"stage": "train_diff", "status": "done", "wall_s": 600.0, "cpu_s": 1100.0},
        {"stage": "train_diff", "step": "train_diff", "status": "done", "wall_s": 1.0, "cpu_s": 1.0},
        {"stage": "train_diff", "status": "reused", "wall_s": 0.1, "cpu_s": 0.1},
        {"stage": "gen", "status": "failed", "wall_s": 5.0, "cpu_s": 5.0},
        {"stage": "gen", "status": "done", "wall_s": 120.0, "cpu_s": 230.0},
    ]
    run.timings.write_text("".join(json.dumps(r) + "\n" for r in lines))
    data = report.main(["--run_dir", str(run.root)])
    assert data["sections"]["timings"] == {
        "train_diff": {"wall_s": 600.0, "cpu_s": 1100.0},
        "gen": {"wall_s": 120.0, "cpu_s": 230.0},
    }
    assert data["demo_dir"] == str(tmp_path / "no_demo")
    assert "| train_diff | 600 | 1100 |" in (run.report_dir / "report.md").read_text()
