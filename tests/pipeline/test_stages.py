"""The stage runner: selection, timing records, and a failing stage named with a non-zero exit.

The stages here are cheap fakes (``python -c ...`` children), no training."""

import json
import sys

import pytest

from sfm.pipeline.stages import Stage, read_timings, run_stages, select

BURN = "import time\nwhile time.process_time() < 0.3: pass"  # 0.3 CPU-s in a child


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def fake(name, *codes, log=None):
    """A stage that runs ``python -c code`` for each of ``codes`` (none: it reuses its outputs)."""

    def run(runner):
        if log is not None:
            log.append(name)
        for code in codes:
            runner.call([sys.executable, "-c", code], label=f"{name}_child")

    return Stage(name, f"fake stage {name}", run)


STAGES = [fake("data"), fake("train"), fake("eval")]


def test_select_keeps_pipeline_order_and_names_unknown_stages():
    assert [s.name for s in select(STAGES, None, ["train", "eval"])] == ["train", "eval"]
    assert [s.name for s in select(STAGES, "eval,data", [])] == ["data", "eval"]
    assert [s.name for s in select(STAGES, "eval train", [])] == ["train", "eval"]
    assert [s.name for s in select(STAGES, "all", [])] == ["data", "train", "eval"]
    assert [s.name for s in select(STAGES, "eval", [], always=("data",))] == ["data", "eval"]
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['trian'\]; the stages are: data train eval"):
        select(STAGES, "train trian", [])
    with pytest.raises(ValueError, match="unknown stage"):
        select(STAGES, " ", [])


def test_stages_are_timed_with_their_children_cpu(tmp_path):
    timings = tmp_path / "timings.jsonl"
    stages = [fake("data"), fake("train", BURN), fake("eval", "pass")]
    assert run_stages("demo", stages, timings) == 0
    recs = records(timings)
    by_stage = {(r["stage"], r.get("step")): r for r in recs}
    assert by_stage[("data", None)]["status"] == "reused"  # launched nothing: its outputs existed
    train = by_stage[("train", None)]
    assert train["status"] == "done" and train["pipeline"] == "demo"
    assert train["cpu_s"] >= 0.25 and train["wall_s"] >= 0.25  # the child's CPU is counted
    assert by_stage[("train", "train_child")]["cpu_s"] >= 0.25  # a labelled call: its own record
    assert set(read_timings(timings)) == {"train", "eval"}  # reused stages and steps apart


def test_a_failing_stage_stops_the_run_with_its_name(tmp_path, capsys):
    timings = tmp_path / "timings.jsonl"
    log = []
    stages = [fake("data", "pass", log=log), fake("train", "import sys; sys.exit(3)", log=log), fake("eval", log=log)]
    assert run_stages("demo", stages, timings) == 1
    assert log == ["data", "train"]  # eval never started
    err = capsys.readouterr().err
    assert "[demo] FAILED in stage 'train'" in err and "exited with status 3" in err
    last = records(timings)[-1]
    assert last["stage"] == "train" and last["status"] == "failed" and "status 3" in last["error"]
    assert set(read_timings(timings)) == {"data"}


def test_an_error_in_the_pipeline_code_is_shown_and_named(tmp_path, capsys):
    def broken(runner):
        raise FileNotFoundError("data/demo/is2re/val_id: no such split")

    assert run_stages("demo", [Stage("place", "broken", broken)], tmp_path / "t.jsonl") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "FAILED in stage 'place': data/demo/is2re/val_id: no such split" in err


def test_read_timings_names_a_corrupt_line(tmp_path):
    path = tmp_path / "timings.jsonl"
    path.write_text('{"stage": "a", "status": "done", "wall_s": 1, "cpu_s": 1}\n{"stage": "b", \n')
    with pytest.raises(ValueError, match="timings.jsonl line 2: not a JSON record"):
        read_timings(path)


def test_pipeline_children_keep_freed_memory_and_one_thread(tmp_path, monkeypatch, capfd):
    """commands.run gives its children glibc's keep-freed-memory setting (the training step's page
    faults) and keeps the OpenMP threads the user set."""
    import os

    from sfm.pipeline.layout import RunLayout
    from sfm.tasks import commands

    for name in ("GLIBC_TUNABLES", "PYTHONPATH"):  # restored after the test, whatever run() sets
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    show = "import os; print('ENV', os.environ['GLIBC_TUNABLES'], os.environ['OMP_NUM_THREADS'])"
    assert commands.run("test", RunLayout(tmp_path), {}, [fake("show", show)], None) == 0
    assert f"ENV {commands.KEEP_FREED_MEMORY} 3" in capfd.readouterr().out
