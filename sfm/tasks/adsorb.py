"""Find the lowest-energy adsorption configuration of an adsorbate on your slab (AdsorbML's search).

    python -m sfm.tasks.adsorb --slab my_slab.cif --adsorbate '*OH' --heuristic --random 20 \
        --diffusion runs/diff/model.pt --num_generated 20 --relaxer runs/s2ef/model.pt --out runs/adsorb/my_slab_OH
    python -m sfm.tasks.adsorb --bulk Cu.cif --miller 1,1,1 --adsorbate '*CO' --heuristic \
        --relaxer ase.calculators.emt:EMT --out runs/adsorb/Cu111_CO
    bash scripts/adsorb.sh ...                                       (the launcher)

Every step and output is described in sfm/pipeline/adsorb.py; ``sfm.adsorb(...)`` is the same
search from Python. Prints the best placements and writes report.md in --out.
"""

from __future__ import annotations

import argparse
import sys

from sfm.pipeline.adsorb import AdsorbConfig, run_adsorb


def _ints(text: str, what: str, parser) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        parser.error(f"--{what} must be comma-separated integers, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("surface and adsorbate")
    g.add_argument(
        "--slab", help="slab file ASE reads (cif, POSCAR, extxyz, traj, file.db@id=N); tags 0/1 used if present"
    )
    g.add_argument("--bulk", help="bulk file to cut the slab from, OC20's way (with --miller)")
    g.add_argument("--miller", help="h,k,l of the surface cut from --bulk")
    g.add_argument("--slab_index", type=int, default=0, help="--bulk: which termination of the cut")
    g.add_argument("--adsorbate", default="*OH", help="OC20 adsorbate name (*OH, *CO, ...) or a structure file")
    g.add_argument("--binding", help="adsorbate file: index(es) of the binding atom(s), comma-separated")
    g.add_argument("--min_vacuum", type=float, default=6.0, help="A of vacuum along c the slab must have")
    g = p.add_argument_group("placements")
    g.add_argument("--heuristic", action="store_true", help="every OC20 heuristic site")
    g.add_argument(
        "--max_heuristic",
        type=int,
        help="at most this many heuristic sites (a uniform subset; alloy slabs have 100-300)",
    )
    g.add_argument("--random", type=int, default=0, help="this many random sites (AdsorbML's random placements)")
    g.add_argument("--diffusion", help="diffusion checkpoint (.pt) for generated / refined placements")
    g.add_argument("--num_generated", type=int, default=0, help="adsorbates inpainted from noise")
    g.add_argument("--sampler", choices=("ode", "pc"), default="ode")
    g.add_argument("--sample_steps", type=int, default=25)
    g.add_argument(
        "--t_start", type=float, default=1.0, help="< 1: also refine each heuristic placement from this level"
    )
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("relaxation and energies")
    g.add_argument(
        "--relaxer",
        required=True,
        help="S2EF checkpoint (.pt, batched) or module:factory of an ASE calculator "
        "(ASE loop), e.g. ase.calculators.emt:EMT",
    )
    g.add_argument(
        "--judge",
        help="single point on the --top_k best relaxed placements (AdsorbML's ML+SP): "
        "S2EF checkpoint or module:factory",
    )
    g.add_argument(
        "--energy",
        choices=("auto", "referenced", "total"),
        default="auto",
        help="referenced: the relaxer gives adsorption energies (auto for sfm checkpoints); total: "
        "subtract the relaxed clean slab and gas references (auto for calculators)",
    )
    g.add_argument("--optimizer", choices=("fire", "lbfgs"), default="fire")
    g.add_argument("--fmax", type=float, default=0.05, help="eV/A on free atoms")
    g.add_argument("--steps", type=int, default=300, help="optimiser step cap")
    g.add_argument("--batch_size", type=int, default=16, help="placements relaxed (and generated) together")
    g.add_argument("--max_atoms", type=int, help="atoms per model call in batched relaxation")
    g.add_argument("--device", default="cpu")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes)")
    g.add_argument("--top_k", type=int, default=5, help="best placements written as CIF and listed in the report")
    g.add_argument("--no_progress", action="store_true")
    return p


def config_of(args, parser) -> AdsorbConfig:
    return AdsorbConfig(
        out=args.out,
        relaxer=args.relaxer,
        judge=args.judge,
        adsorbate=args.adsorbate,
        slab=args.slab,
        bulk=args.bulk,
        miller=_ints(args.miller, "miller", parser) if args.miller else None,
        slab_index=args.slab_index,
        binding=_ints(args.binding, "binding", parser) if args.binding else None,
        diffusion=args.diffusion,
        num_generated=args.num_generated,
        sampler=args.sampler,
        sample_steps=args.sample_steps,
        t_start=args.t_start,
        heuristic=args.heuristic,
        max_heuristic=args.max_heuristic,
        random=args.random,
        energy=args.energy,
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        batch_size=args.batch_size,
        max_atoms=args.max_atoms,
        top_k=args.top_k,
        seed=args.seed,
        min_vacuum=args.min_vacuum,
        device=args.device,
        progress=not args.no_progress,
    )


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_of(args, parser)
    try:
        result = run_adsorb(cfg)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:  # named input / relaxer failures
        print(f"adsorb: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    s = result.summary
    print(f"{s['adsorbate']} on {s['slab']}; {s['relaxer']}; energies {s['energy']}")
    for source, b in s["by_source"].items():
        print(f"  {source:10s} {b['placements']:4d} placements, {b['valid']:4d} valid, best E_ads {b['best']:.3f} eV")
    if s["best"] is None:
        print("no valid placement (all anomalous): see", result.out / "report.md")
    else:
        print(
            f"best: {s['best']['adsorption_energy']:.3f} eV ({s['best']['source']} placement {s['best']['index']}); "
            f"report: {result.out / 'report.md'}"
        )
    return result


if __name__ == "__main__":
    main()
