"""The main job on the demo world, on CPU: demo world -> the recipes' models (a low-energy training
set and the diffusion model trained on it, ``sfm.tasks.recipe_diff``; the S2EF model,
``sfm.tasks.recipe_s2ef``) -> S2EF metrics -> sample (inpaint, csp; few-step ODE, baselines) ->
relax and score (S2EF model, EMT judge) -> report. ``--fast`` runs the same stages with fewer
steps and systems on the small demo world.

    python -m sfm.tasks.quickstart [--fast] [--stages ...] [--run_dir DIR] [--diff_steps N] ...

(``bash scripts/quickstart.sh`` installs first, then runs this.) Every folder is named by
:class:`sfm.pipeline.layout.RunLayout`; re-running reuses what is done (a stage skips an output that
exists; sampling resumes). Inpaint runs two ways: from noise (``inpaint_ode``) and from the initial
placement taken as a noisy structure at t=0.55, the state the model learns it at
(``inpaint_denoise``: ``--t_start 0.55 --no_renoise``; training ``--placement_prob 0.5
--placement_t 0.55``).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sfm.pipeline.layout import RunLayout
from sfm.pipeline.stages import Runner, Stage
from sfm.tasks import commands, recipe_diff, recipe_s2ef

SCORED = ("inpaint_ode", "inpaint_denoise", "inpaint_initial", "inpaint_random", "csp_ode")
EXCLUDE = "desorbed,surface_changed,intercalated"


@dataclass(frozen=True)
class Settings:
    """The full run (about 60 min on 2 idle cores, most of it the recipes' training); :data:`FAST`
    is the first look."""

    run_dir: str = "runs/quickstart"
    demo_dir: str = "data/demo"
    small: bool = False  # build the --small demo world
    nproc: int = 2
    # the models: the two recipes' training with their settings (recipe_diff: toward low energy)
    dense_train_systems: int = recipe_diff.Settings.dense_train_systems
    diff_steps: int = recipe_diff.Settings.steps
    s2ef_steps: int = recipe_s2ef.Settings.train_steps
    max_inputs: int = 25  # inpaint: first N val_id systems
    num_samples: int = 5  # per system
    ode_steps: int = 25
    denoise_steps: int = 10
    csp_inputs: int = 10
    relax_steps: int = 150
    val_max: int = 300  # S2EF metrics and parity: first N val_id frames


FAST = Settings(
    run_dir="runs/quickstart_fast",
    demo_dir="data/demo_small",
    small=True,
    dense_train_systems=12,
    diff_steps=150,
    s2ef_steps=150,
    max_inputs=6,
    num_samples=2,
    ode_steps=10,
    denoise_steps=5,
    csp_inputs=3,
    relax_steps=60,
    val_max=64,
)


def low_energy(s: Settings, layout: RunLayout, runner: Runner) -> None:
    """The diffusion recipe's training set toward low energy (:func:`sfm.tasks.recipe_diff.low_energy`)."""
    if (layout.train_set / "data.lmdb").exists():
        runner.reuse(layout.train_set)
        return
    recipe = replace(
        recipe_diff.Settings(), demo_dir=s.demo_dir, nproc=s.nproc, dense_train_systems=s.dense_train_systems
    )
    recipe_diff.low_energy(recipe, layout, runner, small=s.small)


def train_diff(s: Settings, layout: RunLayout, runner: Runner) -> None:
    """The diffusion recipe's training (:func:`sfm.tasks.recipe_diff.train`), ``s.diff_steps`` steps."""
    if not commands.fresh_training(runner, layout.model("diff")):
        return
    shutil.rmtree(layout.diff_dir, ignore_errors=True)  # a killed run's checkpoints: start clean
    recipe = replace(recipe_diff.Settings(), demo_dir=s.demo_dir, nproc=s.nproc, steps=s.diff_steps)
    recipe_diff.train(replace(recipe, warmup=min(recipe.warmup, s.diff_steps // 10)), layout, runner)


def train_s2ef(s: Settings, layout: RunLayout, runner: Runner) -> None:
    """The S2EF recipe's training (:func:`sfm.tasks.recipe_s2ef.train`), ``s.s2ef_steps`` steps."""
    if not commands.fresh_training(runner, layout.model("s2ef")):
        return
    shutil.rmtree(layout.s2ef_dir, ignore_errors=True)
    recipe = recipe_s2ef.Settings()

    def scaled(steps: int) -> int:  # a fine-tuning's steps in the recipe's proportion to the training's
        return steps and max(1, steps * s.s2ef_steps // recipe.train_steps)

    fine = dict(restart_steps=scaled(recipe.restart_steps), energy_ft_steps=scaled(recipe.energy_ft_steps))
    recipe = replace(recipe, demo_dir=s.demo_dir, nproc=s.nproc, train_steps=s.s2ef_steps, **fine)
    recipe_s2ef.train(replace(recipe, warmup=min(recipe.warmup, s.s2ef_steps // 10)), layout, runner)


def eval_s2ef(s: Settings, layout: RunLayout, runner: Runner) -> None:
    out = layout.s2ef_eval("val_id")
    if out.exists():
        runner.reuse(out)
        return
    tmp = out.with_name(out.name + ".tmp")  # the JSON appears complete or not at all
    runner.python(
        "sfm.tasks.eval_s2ef",
        *("--checkpoint", layout.model("s2ef"), "--data_path", Path(s.demo_dir) / "s2ef" / "val_id"),
        *("--data_kind", "s2ef", "--max_structures", s.val_max, "--json", tmp, "--batch_size", 16),
    )
    tmp.rename(out)


def sample(s: Settings, layout: RunLayout, runner: Runner) -> None:
    val = Path(s.demo_dir) / "is2re" / "val_id"
    ck = ("--checkpoint", layout.model("diff"))
    inpaint = ("--mode", "inpaint", "--max_inputs", s.max_inputs)
    csp = ("--mode", "csp", "--max_inputs", s.csp_inputs, "--num_samples", s.num_samples)
    runs = {
        "inpaint_ode": (*ck, *inpaint, "--sampler", "ode", "--steps", s.ode_steps, "--num_samples", s.num_samples),
        "inpaint_denoise": (*ck, *inpaint, "--sampler", "ode", "--steps", s.denoise_steps, "--t_start", 0.55)
        + ("--no_renoise", "--num_samples", 1),
        "inpaint_initial": (*inpaint, "--sampler", "baseline_initial", "--num_samples", 1),
        "inpaint_random": (*inpaint, "--sampler", "baseline_random", "--num_samples", s.num_samples),
        "csp_ode": (*ck, *csp, "--sampler", "ode", "--steps", s.ode_steps),
        "csp_random": (*csp, "--sampler", "baseline_random", "--lattice_data", Path(s.demo_dir) / "is2re" / "train"),
    }
    for name, flags in runs.items():
        common = ("--data_path", val, "--seed", 0, "--batch_size", 16)
        commands.gen(runner, layout, "gen", name, s.nproc, *common, *flags, skip_done=True)
    runner.python("sfm.tasks.gen_table", *layout.runs("gen", "metrics.json"), "--out", layout.table("quality", "gen"))


def score(s: Settings, layout: RunLayout, runner: Runner) -> None:
    val = Path(s.demo_dir) / "is2re" / "val_id"
    for name in SCORED:
        flags = ("--k", 1, s.num_samples, "--exclude", EXCLUDE)
        samples, out = layout.samples("gen", name), layout.run("score", name)
        commands.score(runner, layout.model("s2ef"), samples, val, out, s.relax_steps, *flags, label=f"score_{name}")


def report(s: Settings, layout: RunLayout, runner: Runner) -> None:
    runner.python("sfm.tasks.report", "--run_dir", layout.root, "--demo_dir", s.demo_dir, "--val_max", s.val_max)


def stages(s: Settings, layout: RunLayout) -> list[Stage]:
    def bind(fn):
        return lambda runner: fn(s, layout, runner)

    return [
        Stage("data", f"demo world -> {s.demo_dir}", lambda r: commands.build_demo(r, s.demo_dir, s.nproc, s.small)),
        Stage("lowenergy", f"low-energy training set ({s.dense_train_systems} dense systems)", bind(low_energy)),
        Stage("train_diff", f"diffusion recipe ({s.diff_steps} steps) -> {layout.model('diff')}", bind(train_diff)),
        Stage("train_s2ef", f"S2EF recipe ({s.s2ef_steps} steps) -> {layout.model('s2ef')}", bind(train_s2ef)),
        Stage("eval_s2ef", f"S2EF model vs baselines on val_id -> {layout.s2ef_eval('val_id')}", bind(eval_s2ef)),
        Stage("gen", f"sample val_id (ode {s.ode_steps} steps, {s.num_samples} per system; baselines)", bind(sample)),
        Stage("score", f"relax with the S2EF model ({s.relax_steps} FIRE steps), EMT judge", bind(score)),
        Stage("report", f"report -> {layout.report_dir / 'report.md'}", bind(report)),
    ]


def main(argv=None) -> int:
    full = Settings()
    doc = __doc__.split("\n\n")[0]
    p = commands.parser("python -m sfm.tasks.quickstart", doc, stages(full, RunLayout(full.run_dir)))
    p.add_argument("--fast", action="store_true", help="a first look in about 10 minutes (the small demo world)")
    commands.add_settings(
        p, full, ("small", "nproc"), lambda k: f"full / --fast: {getattr(full, k)} / {getattr(FAST, k)}"
    )
    args = p.parse_args(argv)
    s = commands.given_settings(args, FAST if args.fast else full)
    layout = RunLayout(s.run_dir)
    return commands.run("quickstart", layout, asdict(s), stages(s, layout), args.stages)


if __name__ == "__main__":
    sys.exit(main())
