"""Run a pipeline's stages in order: select them, time them, stop at the first failure naming it.

A pipeline (``sfm.tasks.quickstart``, ``recipe_diff``, ``recipe_s2ef``) is a list of
:class:`Stage`; each stage's function gets a :class:`Runner` and launches the package's own
entry points through it (``python -m ...``, ``torchrun ...``) as subprocesses, so a failure
anywhere ends in a non-zero exit and a line naming the stage.

Timings (``RunLayout.timings``, JSON lines) get one record per stage run::

    {"pipeline": "quickstart", "stage": "train_diff", "status": "done", "wall_s": 612.3,
     "cpu_s": 1190.2, "started": "2026-12-01T22:40:00"}

``status``: "done", "reused" (the stage launched nothing: its outputs existed) or "failed";
``cpu_s``: user + system CPU of this process and of every finished child process (torchrun
counts its workers: ``resource.getrusage(RUSAGE_CHILDREN)``). A call given a ``label`` gets its
own record too, with ``"step": label``.
"""

from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]  # the repository: torchrun entries are its sfm/tasks/*.py


class StageFailed(RuntimeError):
    """A command of a stage exited non-zero (its own messages are above)."""


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: ``run(runner)`` does it (or reuses what exists); ``about`` is the
    line printed when it starts."""

    name: str
    about: str
    run: Callable[[Runner], None]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Timer:
    """Wall and CPU seconds since construction (:func:`_cpu_seconds`)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def record(self, **fields) -> dict:
        return {
            **fields,
            "wall_s": round(time.perf_counter() - self.wall, 2),
            "cpu_s": round(_cpu_seconds() - self.cpu, 2),
            "started": self.started,
        }


class Runner:
    """Launches a stage's commands (printed first, in this process's environment);
    appends timing records to ``timings``; counts the commands (none: the stage reused its outputs)."""

    def __init__(self, pipeline: str, timings: Path):
        self.pipeline, self.timings = pipeline, Path(timings)
        self.stage = None
        self.calls = 0

    def log(self, message: str) -> None:
        print(f"[{self.pipeline}] {message}", flush=True)

    def reuse(self, path) -> None:
        self.log(f"{self.stage}: reusing {path}")

    def write(self, record: dict) -> None:
        self.timings.parent.mkdir(parents=True, exist_ok=True)
        with open(self.timings, "a") as f:
            f.write(json.dumps({"pipeline": self.pipeline, "stage": self.stage, **record}) + "\n")

    def call(self, cmd: list, label: str | None = None, capture: bool = False) -> str | None:
        """Run ``cmd``; StageFailed if it exits non-zero. With ``label`` its time is recorded as a
        step of the stage; with ``capture`` its standard output is returned (and printed)."""
        cmd = [str(c) for c in cmd]
        self.log("$ " + shlex.join(cmd))
        self.calls += 1
        timer = Timer()
        done = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
        if capture:
            print(done.stdout, end="", flush=True)
        if done.returncode != 0:
            raise StageFailed(f"{shlex.join(cmd)} exited with status {done.returncode}")
        if label:
            self.write(timer.record(step=label, status="done"))
        return done.stdout

    def python(self, module: str, *args, label: str | None = None, capture: bool = False) -> str | None:
        """``python -m module args`` with this interpreter (:meth:`call`)."""
        return self.call([sys.executable, "-m", module, *args], label=label, capture=capture)

    def torchrun(self, nproc: int, entry: str, *args, label: str | None = None) -> None:
        """``torchrun --standalone --nproc_per_node nproc sfm/tasks/<entry>.py args`` (one machine,
        a free port, so several runs can share it)."""
        script = ROOT / "sfm" / "tasks" / f"{entry}.py"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", nproc, script, *args]
        self.call(cmd, label=label)


def select(stages: list[Stage], requested, default, always=()) -> list[Stage]:
    """The stages named in ``requested`` (space or comma separated; "all": every stage; None: ``default``)
    plus ``always``, in pipeline order; ValueError naming an unknown stage."""
    names = [s.name for s in stages]
    if requested is None:
        wanted = list(default)
    elif requested.strip() == "all":
        wanted = names
    else:
        wanted = requested.replace(",", " ").split()
    unknown = [w for w in wanted if w not in names]
    if unknown or not wanted:
        raise ValueError(f"unknown stage(s) {unknown or [requested]}; the stages are: {' '.join(names)} (or all)")
    return [s for s in stages if s.name in set(wanted) | set(always)]


def run_stages(pipeline: str, stages: list[Stage], timings: Path) -> int:
    """Run ``stages`` in order, timing each (module docstring); 0, or 1 after the first failure,
    which is recorded and named on stderr (a command's exit status, or the traceback of an error
    in the pipeline's own code)."""
    runner = Runner(pipeline, timings)
    for stage in stages:
        runner.stage, runner.calls = stage.name, 0
        print(flush=True)
        runner.log(f"==== {stage.name}: {stage.about}")
        timer = Timer()
        try:
            stage.run(runner)
        except Exception as err:
            if not isinstance(err, StageFailed):
                traceback.print_exc()
            runner.write(timer.record(status="failed", error=f"{type(err).__name__}: {err}"))
            print(
                f"[{pipeline}] FAILED in stage {stage.name!r}: {err} (see the messages above; rerun to resume)",
                file=sys.stderr,
            )
            return 1
        record = timer.record(status="done" if runner.calls else "reused")
        runner.write(record)
        runner.log(f"{stage.name}: {record['status']}, {record['wall_s']:.0f} s wall, {record['cpu_s']:.0f} CPU-s")
    return 0


def read_timings(path: Path) -> dict[str, dict]:
    """Per stage, its last record that did the work (``status`` "done"; steps apart) of a
    timings file; ValueError naming the file and line of one that is not JSON."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n}: not a JSON record ({err})") from err
        if record.get("status") == "done" and "step" not in record:
            out[record["stage"]] = record
    return out
