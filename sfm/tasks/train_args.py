"""Command-line flags shared by train_diff.py and train_s2ef.py (SFM launcher style).

Every TrainConfig field is a flag of the same name, with the same default; the task entry
points add their own flags to the parser. Batch sizes are PER PROCESS: one optimizer step
sees train_batch_size * world_size * gradient_accumulation_steps structures.
"""

import argparse
import glob
from dataclasses import fields

from sfm.models.backbone import BackboneConfig
from sfm.pipeline.distributed import STRATEGIES
from sfm.pipeline.trainer import TrainConfig

D = TrainConfig()


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def float_in(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (
            value != value
            or (value <= low if low_open else value < low)
            or (high is not None and (value >= high if high_open else value > high))
        ):
            lo = f"{'(' if low_open else '['}{low}"
            hi = f"{high}{')' if high_open else ']'}" if high is not None else "inf)"
            raise argparse.ArgumentTypeError(f"must be in {lo}, {hi}, got {text}")
        return value

    return parse


def build_parser(description: str, default_save_dir: str, model_types: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dict_path", default=None, help="element dictionary (default: dicts/dict.txt of the package)")
    g.add_argument(
        "--train_data_path",
        required=True,
        help="dataset: OC20 LMDB (file / folder of shards), ase.db (.aselmdb, .db, .json), extxyz / traj / ... or a glob",
    )
    g.add_argument(
        "--valid_data_path", default=None, help="validation dataset, any format the training data takes (optional)"
    )
    g.add_argument(
        "--max_sites",
        type=int_at_least(0),
        default=D.max_sites,
        help="drop structures with more atoms than this (0: keep all)",
    )
    g.add_argument("--num_workers", type=int_at_least(0), default=D.num_workers, help="DataLoader workers per process")

    g = p.add_argument_group("schedule and optimizer")
    g.add_argument("--total_num_epochs", type=int_at_least(0), default=D.total_num_epochs)
    g.add_argument(
        "--total_num_steps",
        type=int_at_least(0),
        default=D.total_num_steps,
        help="optimizer steps; > 0 overrides --total_num_epochs",
    )
    g.add_argument("--warmup_num_steps", type=int_at_least(0), default=D.warmup_num_steps)
    g.add_argument("--max_lr", type=float_in(0.0, low_open=True), default=D.max_lr)
    g.add_argument(
        "--min_lr_ratio",
        type=float_in(0.0, 1.0, high_open=False),
        default=D.min_lr_ratio,
        help="cosine floor as a fraction of --max_lr",
    )
    g.add_argument(
        "--weight_decay",
        type=float_in(0.0),
        default=D.weight_decay,
        help="AdamW decay on weight matrices (not on norms, biases, embeddings)",
    )
    g.add_argument("--clip_grad_norm", type=float_in(0.0), default=D.clip_grad_norm, help="0 disables")
    g.add_argument("--ema_decay", type=float_in(0.0, 1.0), default=D.ema_decay)
    g.add_argument(
        "--train_batch_size",
        type=int_at_least(1),
        default=D.train_batch_size,
        help="structures per forward PER PROCESS",
    )
    g.add_argument("--val_batch_size", type=int_at_least(1), default=D.val_batch_size, help="per process")
    g.add_argument("--gradient_accumulation_steps", type=int_at_least(1), default=D.gradient_accumulation_steps)
    g.add_argument(
        "--max_nonfinite_steps",
        type=int_at_least(1),
        default=D.max_nonfinite_steps,
        help="stop after this many consecutive steps skipped for a non-finite loss or gradient",
    )

    g = p.add_argument_group("run")
    g.add_argument("--model_type", default="tiny", choices=model_types, help="backbone preset")
    g.add_argument(
        "--backbone",
        nargs="+",
        type=backbone_override,
        default=[],
        metavar="FIELD=VALUE",
        help="change fields of the preset's BackboneConfig, e.g. grid_resolution=10 sphere_channels=32 "
        "(stored in the checkpoint's build_kwargs)",
    )
    g.add_argument(
        "--strategy",
        default=D.strategy,
        choices=STRATEGIES,
        help="Single: one process; DDP: torch DDP; Zero1/2/3: DeepSpeed ZeRO stage (launch with torchrun)",
    )
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights, optimizer state, geometry)")
    g.add_argument(
        "--activation_checkpointing",
        action="store_true",
        help="recompute each backbone block in the backward pass (less memory, ~25%% more time)",
    )
    g.add_argument("--seed", type=int, default=D.seed)
    g.add_argument("--save_dir", default=default_save_dir)
    g.add_argument("--log_interval", type=int_at_least(1), default=D.log_interval, help="optimizer steps")
    g.add_argument("--save_interval", type=int_at_least(1), default=D.save_interval, help="optimizer steps")
    g.add_argument(
        "--keep_checkpoints", type=int_at_least(0), default=D.keep_checkpoints, help="step checkpoints kept (0: all)"
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue a run: alone, from the latest checkpoint in --save_dir (a fresh start if none); "
        "or from a given checkpoint directory",
    )
    return p


# the numeric fields of the backbone's shape; bf16 / checkpointing have their own flags, the head sets cond_dim
BACKBONE_FIELDS = {
    f.name: f.type for f in fields(BackboneConfig) if f.type in ("int", "float", "int | None") and f.name != "cond_dim"
}


def backbone_override(text: str) -> tuple[str, int | float | None]:
    """``"FIELD=VALUE"`` -> ``(FIELD, VALUE)`` typed like :class:`BackboneConfig`'s field."""
    name, sep, value = text.partition("=")
    if not sep or name not in BACKBONE_FIELDS:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE with FIELD one of {sorted(BACKBONE_FIELDS)}, got {text!r}"
        )
    kind = BACKBONE_FIELDS[name]
    try:
        if kind == "int | None" and value == "none":
            return name, None
        return name, (float if kind == "float" else int)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected {kind.replace(' | None', ' or none')}, got {value!r}")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, then check what argparse cannot (paths, combinations); errors exit with status 2."""
    args = parser.parse_args(argv)
    for flag in ("train_data_path", "valid_data_path", "dict_path"):
        path = getattr(args, flag)
        if path is not None and not glob.glob(str(path)):  # a glob of trajectories is a data path too
            parser.error(f"--{flag} {path}: no such file or directory")
    if args.total_num_steps == 0 and args.total_num_epochs == 0:
        parser.error("give --total_num_epochs or --total_num_steps (both are 0)")
    args.backbone = dict(args.backbone)
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
