"""Generate structures from a diffusion checkpoint, then score them.

    torchrun [--nproc_per_node N ...] sfm/tasks/gen.py --checkpoint runs/diff/model.pt \
        --data_path data/demo/is2re/val_id --mode inpaint --sampler ode --steps 25 \
        --num_samples 10 --save_dir runs/gen_val_id
    python -m sfm.tasks.gen --compositions "Cu3Au, NaCl" --formula_units 2 --mode csp ...
    bash scripts/gen_oc20.sh ...                                        (the launcher)

Inputs: `--data_path` (a dataset, any format `sfm.data.open_dataset` reads: compositions, and for lattice_given / inpaint the
lattice and the given atoms of each entry, at `pos` unless `--given_positions pos_relaxed`)
or `--compositions` (formulas, or a file of them, one per line; csp only; `--num_atoms` or
`--formula_units` set the atom count). `--mode inpaint` gives the atoms with tags in
`--given_tags` (default 0,1: the slab; the adsorbate is generated).

Samplers: `pc` (reference predictor-corrector, default 1000 steps, 2 network calls per
step), `ode` (few-step Heun probability-flow ODE, default 25 steps = 49 calls), and the
baselines `baseline_initial` (the input's pos and cell) and `baseline_random` (uniform
fractional coordinates; csp lattices from `--lattice_data` or the checkpoint's prior),
written the same way so the same metrics score them. `--churn` makes `ode` stochastic (EDM's
stochastic Heun: re-noise before each step, same calls). `--t_start` < 1 refines each
input's pos instead (SDEdit: from the input noised to that level; in inpaint the adsorbate
starts at its initial placement, so the site is kept); with `--no_renoise` the input itself
is the noisy state at `--t_start` (the best inpaint setting on the demo world: README; a
checkpoint trained with `train_diff.py --placement_prob` learned exactly that state at its
`--placement_t`, which `--t_start` should then equal: a warning says when it does not).

Each rank samples its share and streams it to save_dir/samples/rank_*.lmdb and .extxyz;
rerunning the same command resumes (finished samples are kept, not redone). Samples depend
on --seed, the inputs and --batch_size, not on the number of processes. Then rank 0 scores
all samples against the input LMDB (reference: pos_relaxed) with sfm.eval.gen_metrics and
writes save_dir/metrics.json and metrics.txt (the table, also printed). See
sfm/pipeline/sampling.py for the details.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sfm.data.structure import SLAB_TAGS, parse_tags
from sfm.eval.generation import ANGLE_TOL, LTOL, STOL
from sfm.models.diffusion.masks import MODES
from sfm.pipeline.sampling import SAMPLERS, GenConfig, check_config, finish, run_sampling

ADWT_AUTO = {(0, 1): "adsorbate", (0,): "free"}  # given slab -> adsorbate; given subsurface -> free atoms


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("what to generate")
    g.add_argument("--checkpoint", help="consolidated diffusion checkpoint (.pt) from train_diff.py")
    g.add_argument(
        "--data_path", help="dataset to generate for: OC20 LMDB, ase.db / .aselmdb, extxyz, ... (sfm.data.open_dataset)"
    )
    g.add_argument("--compositions", help="formulas ('Cu3Au,NaCl') or a file of them, one per line (csp only)")
    g.add_argument("--num_atoms", type=int, help="compositions: reduced formula scaled to this many atoms")
    g.add_argument("--formula_units", type=int, help="compositions: the formula as written, times this")
    g.add_argument(
        "--mode",
        choices=MODES,
        default="csp",
        help="csp: lattice and all atoms generated; lattice_given: all atoms; inpaint: atoms not in --given_tags",
    )
    g.add_argument(
        "--given_tags", default=",".join(map(str, SLAB_TAGS)), help="inpaint: tags of the given atoms (0,1: the slab)"
    )
    g.add_argument(
        "--given_positions",
        choices=("pos", "pos_relaxed"),
        default="pos",
        help="inpaint: where the given atoms sit (pos: the unrelaxed input a user has)",
    )
    g.add_argument("--max_inputs", type=int, help="use only the first N inputs")
    g.add_argument("--num_samples", type=int, default=1, help="samples per input")
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=SAMPLERS, default="ode")
    g.add_argument("--steps", type=int, help="sampler steps (default: pc 1000, ode 25)")
    g.add_argument("--corrector", type=float, default=0.4, help="pc: Langevin corrector step factor (0: none)")
    g.add_argument(
        "--t_start",
        type=float,
        default=1.0,
        help="< 1: refine each input's pos from this noise level (SDEdit; inpaint keeps the adsorption site)",
    )
    g.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="ode: re-noise before each step by this fraction of the step (EDM stochastic Heun; 0: deterministic)",
    )
    g.add_argument(
        "--no_renoise",
        action="store_true",
        help="with --t_start: take the input as the noisy state at t_start instead of noising it first "
        "(deterministic with ode: one sample per input is enough)",
    )
    g.add_argument(
        "--lattice_data", help="baseline_random in csp: draw lattices from this LMDB's cells (else the prior)"
    )
    g.add_argument("--batch_size", type=int, default=16, help="structures per network call, per process")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: this rank's GPU if any, else cpu)")
    g = p.add_argument_group("output and metrics")
    g.add_argument("--save_dir", required=True)
    g.add_argument("--no_metrics", action="store_true", help="skip the metrics after sampling")
    g.add_argument("--no_progress", action="store_true")
    g.add_argument("--stol", type=float, default=STOL, help="StructureMatcher site tolerance, units of (V/n)^(1/3)")
    g.add_argument("--ltol", type=float, default=LTOL, help="StructureMatcher fractional lattice-length tolerance")
    g.add_argument("--angle_tol", type=float, default=ANGLE_TOL, help="StructureMatcher angle tolerance, degrees")
    g.add_argument(
        "--adwt_atoms",
        choices=("auto", "adsorbate", "free", "all"),
        default="auto",
        help="atoms ADwT scores; auto: the generated ones (adsorbate for given_tags 0,1)",
    )
    return p


def config_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GenConfig:
    try:
        given_tags = parse_tags(args.given_tags)
    except ValueError as err:
        parser.error(str(err))
    cfg = GenConfig(
        save_dir=args.save_dir,
        checkpoint=args.checkpoint,
        data_path=args.data_path,
        compositions=args.compositions,
        num_atoms=args.num_atoms,
        formula_units=args.formula_units,
        mode=args.mode,
        given_tags=given_tags,
        given_positions=args.given_positions,
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.steps,
        corrector=args.corrector,
        t_start=args.t_start,
        renoise=not args.no_renoise,
        churn=args.churn,
        batch_size=args.batch_size,
        seed=args.seed,
        max_inputs=args.max_inputs,
        lattice_data=args.lattice_data,
        device=args.device,
        progress=not args.no_progress,
    )
    try:
        check_config(cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return cfg


def adwt_atoms(args, cfg: GenConfig) -> str:
    if args.adwt_atoms != "auto":
        return args.adwt_atoms
    if cfg.mode != "inpaint":
        return "all"
    return ADWT_AUTO.get(tuple(sorted(set(cfg.given_tags))), "all")


def write_metrics(args, cfg: GenConfig, stats: dict) -> dict:
    """Metrics of every sample in save_dir against the inputs; writes metrics.json / metrics.txt."""
    from sfm.data import LmdbDataset, open_dataset, write_json
    from sfm.data.lattice import as_cell
    from sfm.eval.gen_metrics import format_table, generation_metrics
    from sfm.eval.generation import is_valid

    samples = LmdbDataset(Path(cfg.save_dir) / "samples")
    if stats["network_calls_per_sample"] is None:  # a resume with nothing left to make: as the samples record it
        nfe = [float(d.nfe) for d in samples if "nfe" in d]
        stats = {**stats, "network_calls_per_sample": sum(nfe) / len(nfe) if nfe else None}
    if cfg.data_path is not None:
        metrics = generation_metrics(
            samples, open_dataset(cfg.data_path), args.stol, args.ltol, args.angle_tol, adwt_atoms(args, cfg)
        )
        table = format_table(metrics)
    else:  # compositions: no reference structure, so validity only
        valid = [is_valid(d.pos.double(), as_cell(d.cell).double()) for d in samples]
        metrics = {"samples": len(valid), "validity": sum(valid) / len(valid)}
        table = f"samples   {metrics['samples']}\nvalidity  {metrics['validity']:.3f}"
    refine = f" from t_start {cfg.t_start}{'' if cfg.renoise else ' (no noise added)'}" if cfg.t_start < 1 else ""
    run = [
        f"{cfg.mode} / {cfg.sampler} / {cfg.steps} steps{refine}",
        f"network calls per sample {stats['network_calls_per_sample']}",
        f"this run: {stats['samples_written_this_run']} samples in {stats['sampling_wall_s']:.1f} s "
        f"({stats['samples_per_s'] or 0:.3f} samples/s, {stats['world_size']} process(es), {stats['device']})",
    ]
    table = "\n".join(run) + "\n\n" + table
    out = {"run": stats, "metrics": metrics}
    write_json(Path(cfg.save_dir) / "metrics.json", out)
    (Path(cfg.save_dir) / "metrics.txt").write_text(table + "\n")
    print(table)
    return out


def main(argv=None) -> dict | None:
    """Sample, then (rank 0) score; returns ``{"run": stats, "metrics": ...}`` on rank 0 (metrics None with --no_metrics)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_of(args, parser)
    stats = run_sampling(cfg)
    if args.no_metrics:
        return finish(lambda: {"run": stats, "metrics": None})
    return finish(lambda: write_metrics(args, cfg, stats))


if __name__ == "__main__":
    main()
