"""The package's entry points as the command lines a pipeline stage runs (sfm.pipeline.stages).

Shared by the demo pipelines (``sfm.tasks.quickstart``, ``recipe_diff``, ``recipe_s2ef``): build
the demo world, train under torchrun, sample, score; plus the flags every pipeline takes and its
``main``. Only what a pipeline chooses is passed: every other setting is the entry point's own
default (``python -m sfm.tasks.X --help``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from sfm.pipeline.layout import RunLayout
from sfm.pipeline.stages import ROOT, Runner, Stage, run_stages, select

KEEP_FREED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def strategy(nproc: int) -> str:
    return "DDP" if nproc > 1 else "Single"


def build_demo(runner: Runner, demo_dir: Path, nproc: int, small: bool = False) -> None:
    """The demo world at ``demo_dir`` (reused when complete; a concurrent build of it is waited for)."""
    if (Path(demo_dir) / "summary.json").is_file():
        runner.reuse(demo_dir)
        return
    runner.python("sfm.data.demo", "--out", demo_dir, "--workers", nproc, *(["--small"] if small else []))


def fresh_training(runner: Runner, path) -> bool:
    """Whether the model at ``path`` (a training's model.pt) must be trained: False (reused) when it
    exists and loads with this version of sfm; RuntimeError when it exists but does not load (stale)."""
    path = Path(path)
    if not path.exists():
        return True
    import sfm

    try:
        sfm.load_checkpoint(str(path), map_location="cpu")
    except Exception as err:
        raise RuntimeError(
            f"{path} does not load with this version of sfm (made by an older one?): delete it "
            f"(or choose another run folder) and rerun ({type(err).__name__}: {err})"
        ) from err
    runner.reuse(path)
    return False


def train(runner: Runner, kind: str, nproc: int, save_dir, data, valid, extra=(), label=None, **flags) -> None:
    """``torchrun train_<kind>.py`` on ``data`` (validation on ``valid``; None: none) into ``save_dir``;
    ``flags``: flags of the entry point (``name=value``); ``extra``: command-line flags after them
    (they win)."""
    args = ["--train_data_path", data, "--save_dir", save_dir, "--strategy", strategy(nproc)]
    args += ["--valid_data_path", valid] if valid else []
    for name, value in flags.items():
        args += [f"--{name}", value]
    runner.torchrun(nproc, f"train_{kind}", *args, *extra, label=label or f"train_{kind}")


def gen(runner: Runner, layout: RunLayout, group: str, name: str, nproc: int, *flags, skip_done=False) -> None:
    """One sampling run (``torchrun gen.py``) into ``root/group/name``: resumes what exists;
    with ``skip_done`` not launched at all when its metrics exist. Later flags win."""
    if skip_done and layout.gen_metrics(group, name).exists():
        runner.reuse(layout.run(group, name))
        return
    runner.torchrun(
        nproc, "gen", "--save_dir", layout.run(group, name), *flags, label=f"gen_{group}_{name}".replace("/", "_")
    )


def score(runner: Runner, checkpoint, samples, reference, out: Path, steps: int, *flags, label=None) -> None:
    """Relax ``samples`` with the S2EF ``checkpoint`` (FIRE, ``steps`` at most), EMT judge, into ``out``
    (``python -m sfm.tasks.score``); kept when ``out/scores.json`` exists."""
    if (Path(out) / "scores.json").exists():
        runner.reuse(out)
        return
    runner.python(
        "sfm.tasks.score",
        *("--checkpoint", checkpoint, "--samples", samples, "--reference", reference, "--out", out),
        *("--steps", steps, "--judge", "emt", *flags),
        label=label,
    )


def add_settings(p: argparse.ArgumentParser, defaults, skip=("nproc",), note=None) -> None:
    """A flag ``--name`` per field of the settings dataclass ``defaults`` (not in ``skip``), typed like
    its default (None: a number), unset when not given; ``note(name)``: its help."""
    for f in fields(defaults):
        if f.name not in skip:
            value = getattr(defaults, f.name)
            kind = float if value is None else type(value)
            p.add_argument(f"--{f.name}", type=kind, help=note(f.name) if note else f"default: {value!r}")


def given_settings(args: argparse.Namespace, defaults):
    """``defaults`` with the flags that were given (:func:`add_settings`, and ``--nproc``)."""
    given = {f.name: getattr(args, f.name) for f in fields(defaults) if getattr(args, f.name, None) is not None}
    return replace(defaults, **given)


def parser(prog: str, description: str, stages: list[Stage], default=None) -> argparse.ArgumentParser:
    """The flags of every pipeline: ``--stages`` (listing ``stages``; ``default``: the names run
    without it, None: all) and ``--nproc``."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawTextHelpFormatter)
    default = default or [s.name for s in stages]
    p.add_argument(
        "--stages",
        default=None,
        help=f"stages to run, space or comma separated, or all (default: {' '.join(default)})\n"
        + "\n".join(f"  {s.name}: {s.about}" for s in stages),
    )
    p.add_argument("--nproc", type=int, default=2, help="processes for training and sampling (default 2)")
    return p


def run(pipeline: str, layout: RunLayout, settings: dict, stages: list[Stage], chosen, default=None, always=()) -> int:
    """Select the stages (:func:`sfm.pipeline.stages.select`; ``default`` None: all; exit status 2
    naming an unknown one), record the settings, run them: the exit status."""
    try:
        todo = select(stages, chosen, default or [s.name for s in stages], always)
    except ValueError as err:
        print(f"{pipeline}: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the processes share the cores
    # glibc keeps freed memory instead of returning each large block: no page faults for every new
    # activation, 8-10 % of a tiny CPU training step (README, performance); ignored elsewhere
    os.environ.setdefault("GLIBC_TUNABLES", KEEP_FREED_MEMORY)
    path = os.environ.get("PYTHONPATH")  # torchrun runs sfm/tasks/*.py as scripts: they import this sfm
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    layout.write_settings(pipeline, settings)
    print(f"[{pipeline}] {layout.root}: stages {' '.join(s.name for s in todo)}; settings {settings}", flush=True)
    code = run_stages(pipeline, todo, layout.timings)
    if code == 0:
        print(f"[{pipeline}] done: {layout.root} (stage times in {layout.timings})")
    return code
