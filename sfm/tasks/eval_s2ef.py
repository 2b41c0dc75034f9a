"""Evaluate an S2EF checkpoint: energy MAE, force MAE (free atoms), force cosine, EFwT per split,
next to the training-mean / per-element linear-fit energy baselines with zero forces.

    python -m sfm.tasks.eval_s2ef --checkpoint runs/s2ef/model.pt \
        --data_path data/demo/s2ef/val_id [more LMDBs] [--data_kind s2ef|is2re] [--json out.json]

`--data_kind is2re` reads IS2RE LMDBs: the relaxed structures (y_relaxed, zero force on free
atoms) and the initial ones (y_init, energy only); see sfm/eval/s2ef_eval.py. The baselines are
fitted on `--train_data_path` (default: the checkpoint's own training data and kind).
"""

import argparse
from pathlib import Path

import torch

import sfm
from sfm.data import open_dataset, write_json
from sfm.data.views import KINDS
from sfm.eval.s2ef_eval import fit_baselines, format_table, split_metrics, split_name, training_items
from sfm.tasks.train_args import int_at_least


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="consolidated S2EF checkpoint (.pt)")
    p.add_argument(
        "--data_path", required=True, nargs="+", help="OC20 LMDB file(s) or folder(s) of shards, one per split"
    )
    p.add_argument("--data_kind", choices=KINDS, default="s2ef", help="s2ef: y/force frames; is2re: relaxed + initial")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--batch_size", type=int_at_least(1), default=16, help="structures per forward")
    p.add_argument("--max_structures", type=int_at_least(0), default=0, help="first N entries of each split (0: all)")
    p.add_argument("--train_data_path", help="training LMDB for the baselines (default: the checkpoint's)")
    p.add_argument("--train_data_kind", choices=KINDS, help="its kind (default: the checkpoint's data_kind)")
    p.add_argument(
        "--baseline_structures",
        type=int_at_least(0),
        default=20000,
        help="training entries the baselines are fitted on (seeded subset; 0: all)",
    )
    p.add_argument("--no_baselines", action="store_true", help="model metrics only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    for path in [args.checkpoint, *args.data_path]:
        if not Path(path).exists():
            p.error(f"{path}: no such file or directory")

    model = sfm.load_checkpoint(args.checkpoint, map_location=args.device)
    if not hasattr(model, "predict") or model.checkpoint.get("task") not in (None, "s2ef"):
        p.error(f"{args.checkpoint} is a '{model.checkpoint.get('task')}' checkpoint, not an S2EF one")
    run_args = model.checkpoint.get("args", {})
    report = {"checkpoint": str(args.checkpoint), "data_kind": args.data_kind, "splits": {}}
    baselines = None
    if not args.no_baselines:
        train_path = args.train_data_path or run_args.get("train_data_path")
        train_kind = args.train_data_kind or run_args.get("data_kind", "s2ef")
        if not train_path or not Path(train_path).exists():
            p.error(
                f"baselines need the training data: --train_data_path (checkpoint names {train_path!r}), "
                "or --no_baselines"
            )
        items = training_items(open_dataset(train_path), train_kind, args.baseline_structures)
        baselines = fit_baselines(items)
        report["baselines_fitted_on"] = {
            "path": str(train_path),
            "kind": train_kind,
            "max_entries": args.baseline_structures,
        }
    for path in args.data_path:
        name = split_name(path)
        while name in report["splits"]:
            name += "+"
        report["splits"][name] = split_metrics(
            model,
            open_dataset(path),
            args.data_kind,
            baselines,
            args.batch_size,
            args.device,
            not args.no_progress,
            args.max_structures,
        )
        report["splits"][name]["path"] = str(path)
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
