"""The main job on the demo world, on CPU: demo world -> train diffusion + S2EF -> S2EF metrics ->
sample (inpaint, csp; few-step ODE, baselines) -> relax and score (S2EF model, EMT judge) -> report.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from sfm.pipeline.layout import RunLayout
from sfm.pipeline.stages import Runner, Stage
from sfm.tasks import commands

SCORED = ("inpaint_ode", "inpaint_denoise", "inpaint_initial", "inpaint_random", "csp_ode")
EXCLUDE = "desorbed,surface_changed,intercalated"


@dataclass(frozen=True)
class Settings:
    """The full run (33 min from a fresh clone on 2 idle cores); :data:`FAST` is the first look."""

    run_dir: str = "runs/quickstart"
    demo_dir: str = "data/demo"
    small: bool = False  # build the --small demo world
    nproc: int = 2
    diff_steps: int = 900
    s2ef_steps: int = 1500
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


def train_diff(s: Settings, layout: RunLayout, runner: Runner) -> None:
    if not commands.fresh_training(runner, layout, "diff"):
        return
    shutil.rmtree(layout.diff_dir, ignore_errors=True)  # a killed run's checkpoints: start clean
    is2re = Path(s.demo_dir) / "is2re"
    commands.train(
        runner,
        "diff",
        s.nproc,
        layout.diff_dir,
        is2re / "train",
        is2re / "val_id",
        model_type="tiny",
        train_batch_size=8,
        val_batch_size=16,
        max_lr=1e-3,
        warmup_num_steps=s.diff_steps // 10,
        log_interval=s.diff_steps // 30 + 1,
        save_interval=1000000,
        total_num_steps=s.diff_steps,
        mode_probs="csp=0.15,lattice_given=0.15,inpaint=0.7",
        placement_prob=0.5,
        placement_t=0.55,
    )


def train_s2ef(s: Settings, layout: RunLayout, runner: Runner) -> None:
    if not commands.fresh_training(runner, layout, "s2ef"):
        return
    shutil.rmtree(layout.s2ef_dir, ignore_errors=True)
    commands.train(
        runner,
        "s2ef",
        s.nproc,
        layout.s2ef_dir,
        Path(s.demo_dir) / "s2ef" / "train",
        None,
        model_type="tiny",
        train_batch_size=4,
        max_lr=1e-3,
        warmup_num_steps=s.s2ef_steps // 15,
        log_interval=s.s2ef_steps // 30 + 1,
        save_interval=1000000,
        total_num_steps=s.s2ef_steps,
        ema_decay=0.99,
    )


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
        Stage(
            "train_diff", f"diffusion model (tiny, {s.diff_steps} steps) -> {layout.model('diff')}", bind(train_diff)
        ),
        Stage("train_s2ef", f"S2EF model (tiny, {s.s2ef_steps} steps) -> {layout.model('s2ef')}", bind(train_s2ef)),
        Stage("eval_s2ef", f"S2EF model vs baselines on val_id -> {layout.s2ef_eval('val_id')}", bind(eval_s2ef)),
        Stage("gen", f"sample val_id (ode {s.ode_steps} steps, {s.num_samples} per system; baselines)", bind(sample)),
        Stage("score", f"relax with the S2EF model ({s.relax_steps} FIRE steps), EMT judge", bind(score)),
        Stage("report", f"report -> {layout.report_dir / 'report.md'}", bind(report)),
    ]


def main(argv=None) -> int:
    full = Settings()
    doc = __doc__.split("\n\n")[0]
    p = commands.parser("python -m sfm.tasks.quickstart", doc, stages(full, RunLayout(full.run_dir)))
    p.add_argument("--fast", action="store_true", help="a first look in under 10 minutes (the small demo world)")
    commands.add_settings(
        p, full, ("small", "nproc"), lambda k: f"full / --fast: {getattr(full, k)} / {getattr(FAST, k)}"
    )
    args = p.parse_args(argv)
    s = commands.given_settings(args, FAST if args.fast else full)
    layout = RunLayout(s.run_dir)
    return commands.run("quickstart", layout, asdict(s), stages(s, layout), args.stages)


if __name__ == "__main__":
    sys.exit(main())
