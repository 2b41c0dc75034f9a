"""Score samples with an S2EF checkpoint: energies and forces, batched relaxation, ranking per
system, anomalies, and placement success@k against a reference LMDB.

    python -m sfm.tasks.score --checkpoint runs/s2ef/model.pt --samples runs/gen/samples \
        --reference data/demo/is2re/val_id --out runs/gen/scored [--judge emt] [--steps 300]
    bash scripts/score_oc20.sh ...                                        (the launcher)

--samples: a sample LMDB (file, or folder of shards such as gen_oc20.sh's save_dir/samples) or
an extxyz; each sample carries the `sid` of its input system and a `sample_idx`. An IS2RE
split itself is a valid sample file (one sample per system at `pos`: the initial placement).
Writes --out/scored.lmdb, samples.csv, systems.csv, scores.json (see sfm/eval/ranking_files.py).
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

import sfm
from sfm.data import write_lmdb
from sfm.data.structure import sid_of
from sfm.eval.ranking import ANOMALIES, RankingConfig, check_config, rank_samples
from sfm.eval.ranking_files import (
    first_samples,
    format_summary,
    ranked_samples,
    read_dense_references,
    read_references,
    read_samples,
    write_outputs,
)
from sfm.relax.emt_judge import EMTJudge
from sfm.tasks.train_args import float_in, int_at_least


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="consolidated S2EF checkpoint (.pt) from train_s2ef.py")
    p.add_argument("--samples", required=True, help="sample LMDB (file or folder of shards) or .extxyz/.xyz")
    p.add_argument("--reference", help="reference LMDB by sid (y_relaxed: success@k; pos_relaxed: EMT offsets)")
    p.add_argument(
        "--dense",
        action="store_true",
        help="--reference is a dense split folder (DIR/is2re_dense/SPLIT): each system's reference is its "
        "lowest relaxed placement not disqualified by --exclude (AdsorbML's), not one relaxation",
    )
    p.add_argument(
        "--drop_unmatched", action="store_true", help="drop samples whose sid is not in --reference (default: an error)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--ranked",
        help="also write the samples at their final positions here (an LMDB), numbered by rank "
        "(sample_idx 0 = best of its system): python -m sfm.eval.success scores the model's order from it",
    )
    p.add_argument("--max_samples", type=int_at_least(0), default=0, help="score only the first N samples (0: all)")
    p.add_argument(
        "--samples_per_system",
        type=int_at_least(0),
        default=0,
        help="keep each system's K samples of lowest sample_idx (0: all)",
    )
    g = p.add_argument_group("relaxation")
    g.add_argument("--steps", type=int_at_least(0), default=300, help="optimiser step cap (0: predict only)")
    g.add_argument("--optimizer", choices=("fire", "lbfgs"), default="fire")
    g.add_argument("--fmax", type=float_in(0.0, low_open=True), default=0.05, help="eV/A on free atoms")
    g.add_argument("--batch_size", type=int_at_least(1), default=32, help="structures relaxed together")
    g.add_argument("--max_atoms", type=int_at_least(1), default=None, help="atoms per model call (memory)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = p.add_argument_group("judging and success")
    g.add_argument(
        "--judge",
        choices=("none", *EMTJudge.NAMES),
        default="none",
        help="re-evaluate model-relaxed structures: emt (single point) or emt_relax (EMT relaxation)",
    )
    g.add_argument(
        "--k", type=int_at_least(1), nargs="+", default=[1], help="success@k for these k (and for all samples)"
    )
    g.add_argument(
        "--threshold", type=float_in(0.0), default=0.1, help="eV above y_relaxed that still counts as success"
    )
    g.add_argument(
        "--exclude",
        default=",".join(ANOMALIES),
        help=f"anomaly kinds that disqualify a sample (comma list of {','.join(ANOMALIES)}; '' for none)",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("checkpoint", "samples", "reference"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            parser.error(f"--{flag} {path}: no such file or directory")
    cfg = RankingConfig(
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        batch_size=args.batch_size,
        max_atoms=args.max_atoms,
        exclude=tuple(k.strip() for k in args.exclude.split(",") if k.strip()),
        threshold=args.threshold,
        ks=tuple(args.k),
        device=args.device,
        progress=not args.no_progress,
    )
    judge = None if args.judge == "none" else EMTJudge(relax=args.judge == "emt_relax", settings=cfg.relax_settings())
    try:
        check_config(cfg)
        samples = read_samples(args.samples)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    samples = samples[: args.max_samples] if args.max_samples else samples
    samples = first_samples(samples, args.samples_per_system) if args.samples_per_system else samples
    if args.dense and not args.reference:
        parser.error("--dense needs --reference DIR/is2re_dense/SPLIT")
    try:
        if args.dense:
            references = read_dense_references(args.reference, cfg.exclude)
        else:
            references = read_references(args.reference) if args.reference else None
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if references is not None:
        missing = {sid_of(s) for s in samples} - set(references)
        if missing and not args.drop_unmatched:
            parser.error(
                f"{len(missing)} sample sid(s) not in --reference {args.reference}, e.g. {sorted(missing)[:5]} "
                "(--drop_unmatched scores only the reference's systems)"
            )
        samples = [s for s in samples if sid_of(s) in references]
        if not samples:
            parser.error(f"no sample sid is in --reference {args.reference}")
    model = sfm.load_checkpoint(args.checkpoint, map_location=args.device)
    if not hasattr(model, "predict") or model.checkpoint.get("task") not in (None, "s2ef"):
        parser.error(f"--checkpoint {args.checkpoint} is a '{model.checkpoint.get('task')}' checkpoint, not S2EF")
    start = time.time()
    scored = rank_samples(model, samples, cfg, references, judge)
    scored.summary["wall_s"] = round(time.time() - start, 1)
    config = {
        **asdict(cfg),
        "judge": args.judge,
        "checkpoint": str(args.checkpoint),
        "samples": str(args.samples),
        "reference": args.reference,
    }
    paths = write_outputs(scored, args.out, config)
    if args.ranked:
        write_lmdb(args.ranked, ranked_samples(scored))
        paths["ranked"] = Path(args.ranked)
    print(format_summary(scored.summary))
    print("wrote " + "  ".join(str(p) for p in paths.values()))
    return json.loads(paths["json"].read_text())


if __name__ == "__main__":
    main()
