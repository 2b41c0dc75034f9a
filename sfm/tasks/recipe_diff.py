"""The diffusion demo recipe on CPU: train, sample, score against baselines (the quality bar).

    python -m sfm.tasks.recipe_diff [--stages "data train eval"] [--steps 1800] ...

(``bash scripts/recipe_diff_demo.sh`` runs it with its environment variables.) Stages:
  data     build the demo world at --demo_dir if missing
  lowenergy (optional; the training set toward low energy, used by train when given) the dense
           training set --dense_train_dir (--dense_train_systems train systems, 8 heuristic + 8 random
           sites each, EMT-relaxed; built if missing) and from it RUN/train_set: every placement paired
           with the nearest of its system's --best lowest valid configurations within 0.1 eV of the
           minimum (python -m sfm.data.dense_targets low_energy)
  train    torchrun train_diff.py, --nproc processes (DDP), --model_type, --steps optimizer steps of
           --batch_size structures per process on DEMO/is2re/train, or RUN/train_set when lowenergy
           wrote it (validation on val_id); inpaint structures trained from their placement at
           --denoise_t with --placement_prob: RUN/train
  tune     (optional) the denoise ODE with 1, 2, 3, 5, 10, 20 steps next to the initial placement,
           on test_id: RUN/tune.md
  samplers (optional) few-step vs reference, inpaint on the first --sampler_inputs val_id systems,
           --sampler_samples each, seed 1: from noise pc --pc_steps (the reference), pc 25,
           ancestral 50 (pc without corrector), ode 25; from the placement (--t_start DENOISE_T
           --no_renoise) pc at the reference's step size, ode --refine_steps, ode 1: RUN/samplers.md
  dense    (optional) placement success against the dense minimum (python -m sfm.eval.success) on each
           split of --dense_splits of DEMO/is2re_dense, next to its heuristic and random sites: from
           noise (inpaint, ode --ode_steps, --dense_noise_samples per system), and every heuristic site
           denoised (--t_start DENOISE_T --no_renoise, one sample each) with ode --refine_steps and ode 5
           steps: samples in RUN/dense/SPLIT/*, table RUN/dense_SPLIT.md (+ .json); with --rank_checkpoint
           also each of these sets and the heuristic sites reordered by that S2EF model's energy at
           the placement (sfm.tasks.score --steps 0 --ranked; sets NAME_ranked: @k = the model's k best)
  eval     per split of --splits: inpaint ode (--ode_steps), pc (--pc_steps, splits in --pc_splits,
           --pc_samples per system), refine (the placement noised to --refine_t, ode --refine_steps)
           and, on --bar_inputs systems, the bar: denoise (the placement taken as the noisy state at
           --denoise_t, ode --refine_steps, 1 sample), the initial placement, random positions;
           csp on the first --csp_inputs val_id systems (ode, pc, random lattices from train):
           RUN/quality_bar.md; denoise vs initial paired per system (sfm.eval.paired): RUN/paired.md
Sampling runs resume. Paths: :class:`sfm.pipeline.layout.RunLayout` with the model in RUN/train.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sfm.pipeline.layout import RunLayout
from sfm.pipeline.stages import Runner, Stage
from sfm.tasks import commands

DEFAULT_STAGES = ("data", "train", "eval")
TUNE_STEPS = (1, 2, 3, 5, 10, 20)


@dataclass(frozen=True)
class Settings:
    run_dir: str = "runs/recipe_diff_demo"
    demo_dir: str = "data/demo"
    nproc: int = 2
    model_type: str = "tiny"
    # train_diff.py --backbone: the S2 activation on a 10 x 10 grid, not the preset's 18 x 18: the same
    # dense success for 1,228 instead of 2,880 CPU-s of training (README, placements); "": the preset's
    backbone: str = "grid_resolution=10"
    steps: int = 1800  # optimizer steps: about 0.55 CPU-s per step and process (tiny, 8 structures)
    batch_size: int = 8  # per process
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 1
    ema_decay: float = 0.995
    mode_probs: str = "csp=0.15,lattice_given=0.15,inpaint=0.7"  # the training mix of conditioning modes
    placement_prob: float = 0.5
    max_inputs: int = 50
    bar_inputs: int = 100
    sampler_inputs: int = 100
    sampler_samples: int = 3
    num_samples: int = 5
    ode_steps: int = 25  # Heun: 2 * steps - 1 network calls
    pc_steps: int = 100  # predictor-corrector: 2 * steps calls (shortened from 1000 for CPU time)
    pc_samples: int = 1
    pc_splits: str = "val_id"
    csp_inputs: int = 25
    csp_samples: int = 10
    denoise_t: float = 0.55
    refine_t: float = 0.5
    refine_steps: int = 10
    gen_batch: int = 25
    splits: str = "val_id val_ood_ads val_ood_cat"
    dense_train_dir: str = ""  # "": DEMO_DIR + "_dense_train"
    dense_train_systems: int = 150
    best: int = 4
    dense_splits: str = "val_id"
    dense_noise_samples: int = 5  # 0: no samples from noise in the dense stage
    rank_checkpoint: str = ""  # an S2EF model: the dense stage also scores each set in its order (sets *_ranked)


def low_energy(s: Settings, layout: RunLayout, runner: Runner, small: bool = False) -> None:
    """The dense training set and the low-energy targets; ``small``: the demo world at ``s.demo_dir``
    is a ``--small`` one (the builder checks the world it extends)."""
    dense_dir = s.dense_train_dir or s.demo_dir.rstrip("/") + "_dense_train"
    runner.python(
        "sfm.data.demo",
        *("--out", s.demo_dir, *(["--small"] if small else []), "--workers", s.nproc, "--dense"),
        *("--dense_test", 0, "--dense_val", 0),
        *("--dense_train", s.dense_train_systems, "--dense_sites", 8, "--dense_random", 8, "--dense_out", dense_dir),
        label="dense_train",
    )
    runner.python(
        "sfm.data.dense_targets",
        *("low_energy", "--dense", dense_dir, "--split", "train", "--best", s.best),
        *("--out", layout.train_set / "data.lmdb"),
    )


def train(s: Settings, layout: RunLayout, runner: Runner) -> None:
    is2re = Path(s.demo_dir) / "is2re"
    data = layout.train_set if (layout.train_set / "data.lmdb").exists() else is2re / "train"
    runner.log(f"training on {data}")
    commands.train(
        runner,
        "diff",
        s.nproc,
        layout.diff_dir,
        data,
        is2re / "val_id",
        extra=["--backbone", *s.backbone.split()] if s.backbone else [],
        label="train",
        model_type=s.model_type,
        train_batch_size=s.batch_size,
        val_batch_size=16,
        max_lr=s.lr,
        warmup_num_steps=s.warmup,
        log_interval=50,
        save_interval=500,
        seed=s.seed,
        total_num_steps=s.steps,
        ema_decay=s.ema_decay,
        mode_probs=s.mode_probs,
        placement_prob=s.placement_prob,
        placement_t=s.denoise_t,
    )


def gen(s: Settings, layout: RunLayout, runner: Runner, group: str, name: str, *flags) -> None:
    """One sampling run into RUN/group/name with the recipe's common flags (later flags win)."""
    common = ("--max_inputs", s.max_inputs, "--num_samples", s.num_samples, "--batch_size", s.gen_batch)
    commands.gen(runner, layout, group, name, s.nproc, *common, "--seed", 0, "--no_progress", *flags)


def gen_table(layout: RunLayout, runner: Runner, group: str, table: str) -> None:
    runner.python("sfm.tasks.gen_table", *layout.runs(group, "metrics.json"), "--out", layout.table(table))


def tune(s: Settings, layout: RunLayout, runner: Runner) -> None:
    """Steps of the denoise ODE, on test_id (not a reported split)."""
    data = ("--data_path", Path(s.demo_dir) / "is2re" / "test_id", "--mode", "inpaint")
    bar = ("--num_samples", 1, "--max_inputs", s.bar_inputs)
    for n in TUNE_STEPS:
        flags = ("--checkpoint", layout.model("diff"), *data, "--sampler", "ode", "--steps", n)
        gen(s, layout, runner, "tune", f"denoise_ode{n}", *flags, "--t_start", s.denoise_t, "--no_renoise", *bar)
    gen(s, layout, runner, "tune", "initial", *data, "--sampler", "baseline_initial", *bar)
    gen_table(layout, runner, "tune", "tune")


def samplers(s: Settings, layout: RunLayout, runner: Runner) -> None:
    """Few-step vs reference on val_id: --sampler_inputs systems x --sampler_samples, seed 1."""
    from_pos = ("--t_start", s.denoise_t, "--no_renoise")
    pos_ref = round(s.pc_steps * s.denoise_t)  # the reference's step size, from denoise_t down
    specs = {
        f"noise_pc{s.pc_steps}": ("--sampler", "pc", "--steps", s.pc_steps),
        "noise_pc25": ("--sampler", "pc", "--steps", 25),
        "noise_ancestral50": ("--sampler", "pc", "--steps", 50, "--corrector", 0),
        "noise_ode25": ("--sampler", "ode", "--steps", 25),
        f"pos_pc{pos_ref}": ("--sampler", "pc", "--steps", pos_ref, *from_pos),
        f"pos_ode{s.refine_steps}": ("--sampler", "ode", "--steps", s.refine_steps, *from_pos, "--num_samples", 1),
        "pos_ode1": ("--sampler", "ode", "--steps", 1, *from_pos, "--num_samples", 1),  # ode from pos: deterministic
    }
    data = ("--checkpoint", layout.model("diff"), "--data_path", Path(s.demo_dir) / "is2re" / "val_id")
    size = ("--mode", "inpaint", "--max_inputs", s.sampler_inputs, "--num_samples", s.sampler_samples, "--seed", 1)
    for name, flags in specs.items():
        gen(s, layout, runner, "samplers", name, *data, *size, *flags)
    gen_table(layout, runner, "samplers", "samplers")


def dense(s: Settings, layout: RunLayout, runner: Runner) -> None:
    """Success@k against the dense minimum, next to the heuristic and random sites."""
    dense_dir, ckpt = Path(s.demo_dir) / "is2re_dense", layout.model("diff")
    for split in s.dense_splits.split():
        for source in ("demo", "heuristic"):  # demo: one input per system (for sampling from noise)
            out = layout.dense_inputs(split, source)
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                runner.python(
                    "sfm.data.dense_targets",
                    *("placements", "--dense", dense_dir, "--split", split, "--source", source, "--out", out),
                )
        group, every = f"dense/{split}", ("--mode", "inpaint", "--max_inputs", 100000, "--no_metrics")
        noise = ("--data_path", layout.dense_inputs(split, "demo"), "--sampler", "ode", "--steps", s.ode_steps)
        noise += ("--num_samples", s.dense_noise_samples)
        runs = {f"noise_ode{s.ode_steps}": noise} if s.dense_noise_samples else {}
        for n in (s.refine_steps, 5):
            sites = ("--data_path", layout.dense_inputs(split, "heuristic"), "--sampler", "ode", "--steps", n)
            runs[f"denoise_ode{n}"] = (*sites, "--t_start", s.denoise_t, "--no_renoise", "--num_samples", 1)
        for name, flags in runs.items():
            gen(s, layout, runner, group, name, "--checkpoint", ckpt, *flags, *every)
        samples = [f"--samples={name}={layout.samples(group, name)}" for name in runs]
        if s.rank_checkpoint:  # the same placements in the S2EF model's order (single point), best first
            sources = {
                **{name: layout.samples(group, name) for name in runs},
                "heuristic": layout.dense_inputs(split, "heuristic"),
            }
            for name, path in sources.items():
                out = layout.run(group, f"{name}_ranked")
                if not (out / "ranked.lmdb").exists():
                    runner.python(
                        "sfm.tasks.score",
                        *("--checkpoint", s.rank_checkpoint, "--samples", path, "--out", out, "--steps", 0),
                        *("--exclude", "", "--ranked", out / "ranked.lmdb", "--no_progress"),
                    )
                samples.append(f"--samples={name}_ranked={out / 'ranked.lmdb'}")
            samples += [f"--compare={name}_ranked:heuristic_ranked" for name in runs]  # what generation adds
        table = runner.python(
            "sfm.eval.success",
            *("--dense", dense_dir, "--split", split, "--workers", s.nproc, "--json", layout.success(split), *samples),
            label=f"success_{split}",
            capture=True,
        )
        layout.table(f"dense_{split}").write_text(table)


def inpaint_runs(s: Settings, split: str, ckpt: Path, data: Path) -> dict[str, tuple]:
    """The eval stage's inpaint runs on one split: name -> gen.py flags."""
    inpaint = ("--data_path", data, "--mode", "inpaint")
    model = ("--checkpoint", ckpt, *inpaint)
    bar = ("--num_samples", 1, "--max_inputs", s.bar_inputs)
    runs = {f"inpaint_{split}_ode{s.ode_steps}": (*model, "--sampler", "ode", "--steps", s.ode_steps)}
    if split in s.pc_splits.split():
        runs[f"inpaint_{split}_pc{s.pc_steps}"] = (*model, "--sampler", "pc", "--steps", s.pc_steps)
        runs[f"inpaint_{split}_pc{s.pc_steps}"] += ("--num_samples", s.pc_samples)
    ode_refine = ("--sampler", "ode", "--steps", s.refine_steps)
    runs[f"inpaint_{split}_refine_ode{s.refine_steps}_t{s.refine_t}"] = (*model, *ode_refine, "--t_start", s.refine_t)
    # the bar: the denoised placement vs the placement itself vs random, on bar_inputs systems
    denoise = (*ode_refine, "--t_start", s.denoise_t, "--no_renoise", *bar)
    runs[denoise_name(s, split)] = (*model, *denoise)
    runs[f"inpaint_{split}_initial"] = (*inpaint, "--sampler", "baseline_initial", *bar)
    runs[f"inpaint_{split}_random"] = (*inpaint, "--sampler", "baseline_random", "--max_inputs", s.bar_inputs)
    return runs


def denoise_name(s: Settings, split: str) -> str:
    return f"inpaint_{split}_denoise_ode{s.refine_steps}_t{s.denoise_t}"


def evaluate(s: Settings, layout: RunLayout, runner: Runner) -> None:
    demo, ckpt = Path(s.demo_dir), layout.model("diff")
    for split in s.splits.split():
        for name, flags in inpaint_runs(s, split, ckpt, demo / "is2re" / split).items():
            gen(s, layout, runner, "eval", name, *flags)
    csp = ("--data_path", demo / "is2re" / "val_id", "--mode", "csp", "--max_inputs", s.csp_inputs)
    csp += ("--num_samples", s.csp_samples)
    ode = ("--sampler", "ode", "--steps", s.ode_steps)
    gen(s, layout, runner, "eval", f"csp_val_id_ode{s.ode_steps}", "--checkpoint", ckpt, *csp, *ode)
    pc = ("--sampler", "pc", "--steps", s.pc_steps, "--num_samples", s.pc_samples)
    gen(s, layout, runner, "eval", f"csp_val_id_pc{s.pc_steps}", "--checkpoint", ckpt, *csp, *pc)
    random = ("--sampler", "baseline_random", "--lattice_data", demo / "is2re" / "train")
    gen(s, layout, runner, "eval", "csp_val_id_random", *csp, *random)
    gen_table(layout, runner, "eval", "quality_bar")
    lines = []
    for split in s.splits.split():  # is the denoised placement closer than the placement? paired, per system
        out = runner.python(
            "sfm.eval.paired",
            *("--reference", demo / "is2re" / split, "--json", layout.paired("eval", split)),
            *("--samples", layout.samples("eval", denoise_name(s, split))),
            *("--baseline", layout.samples("eval", f"inpaint_{split}_initial")),
            capture=True,
        )
        lines.append(f"{split}: {out.rstrip()}\n")
    layout.table("paired").write_text("".join(lines))


def stages(s: Settings, layout: RunLayout) -> list[Stage]:
    def bind(fn):
        return lambda runner: fn(s, layout, runner)

    return [
        Stage("data", f"demo world -> {s.demo_dir}", lambda r: commands.build_demo(r, s.demo_dir, s.nproc)),
        Stage("lowenergy", "the low-energy training set -> train_set/", bind(low_energy)),
        Stage("train", f"diffusion model ({s.model_type}, {s.steps} steps) -> {layout.model('diff')}", bind(train)),
        Stage("tune", "denoise ODE steps on test_id -> tune.md", bind(tune)),
        Stage("samplers", "few-step vs reference samplers on val_id -> samplers.md", bind(samplers)),
        Stage("dense", "success@k against the dense minimum -> dense_SPLIT.md", bind(dense)),
        Stage("eval", "the quality bar -> quality_bar.md, paired.md", bind(evaluate)),
    ]


def main(argv=None) -> int:
    base = Settings()
    doc = __doc__.split("\n\n")[0]
    p = commands.parser("python -m sfm.tasks.recipe_diff", doc, stages(base, RunLayout(".")), DEFAULT_STAGES)
    commands.add_settings(p, base)
    args = p.parse_args(argv)
    s = commands.given_settings(args, base)
    layout = RunLayout(s.run_dir, diff="train")
    return commands.run("recipe_diff", layout, asdict(s), stages(s, layout), args.stages, DEFAULT_STAGES)


if __name__ == "__main__":
    sys.exit(main())
