"""Train the energy/force (S2EF) model on the shared trainer.

    torchrun [--nproc_per_node N ...] sfm/tasks/train_s2ef.py --train_data_path D/s2ef/train \
        --valid_data_path D/s2ef/val_id --save_dir runs/s2ef --model_type small --strategy Zero2 ...
    python -m sfm.tasks.train_s2ef ... --strategy Single        (one process)

Data (`--data_kind`): `s2ef` LMDBs (y, force, fixed), or `is2re` LMDBs alone, read as two
samples per entry: the relaxed structure (pos_relaxed, y_relaxed, zero force on free atoms)
and the initial one (pos, y_init) without a force label (see sfm.data.views.IS2REAsS2EF).
The normaliser (mean, std, per-element references, force scale) is fitted on at most
`--normalizer_structures` training structures at the start of a fresh run; it lives in the
model's buffers, so checkpoints carry it and a resumed run keeps it. `--init_from MODEL.pt` starts a
fresh run (optimizer, schedule) from a checkpoint's weights and normaliser instead: fine-tuning on
your own frames, or conservative forces after direct-force training (the direct head is dropped);
with `--energy_branch K`, the energy alone, on a copy of the checkpoint's last K blocks (the forces' weights
frozen: a judge's energies improved without moving the relaxations the forces drive).
"""

import argparse

from sfm.data import Dictionary, open_dataset
from sfm.data.views import KINDS, IS2REAsS2EF
from sfm.models import PRESETS, build_model
from sfm.models.build import RUNTIME_FIELDS
from sfm.models.s2ef import ENERGY_BRANCH, ENERGY_LOSSES, OC20_AVG_NUM_ATOMS
from sfm.pipeline.batches import random_subset
from sfm.pipeline.checkpoint import init_weights
from sfm.pipeline.trainer import resolve_resume, seed_everything, train
from sfm.tasks.train_args import build_parser, float_in, int_at_least, parse_args, train_config

FORCE_HEAD = ("force_head.",)  # present with direct forces only
# what a fine-tuning run may change: the loss, the force mode, how to run (not the dictionary)
HEAD_SETTINGS = (
    "forces",
    "energy_coef",
    "force_coef",
    "adsorbate_force_weight",
    "energy_loss",
    "energy_branch",
    *(f for f in RUNTIME_FIELDS if f != "dictionary"),
)
REQUIRED = {"s2ef": ("y", "force"), "is2re": ("y_init", "y_relaxed", "pos_relaxed")}  # fields per --data_kind


def without_forces(items):
    """IS2RE samples for the normaliser fit: their zero / placeholder forces would give a zero force scale."""
    for d in items:
        del d.force
        yield d


def main(argv=None) -> dict:
    parser = build_parser("Train the S2EF energy/force model", "runs/s2ef", sorted(PRESETS))
    g = parser.add_argument_group("s2ef")
    g.add_argument(
        "--data_kind",
        choices=KINDS,
        default="s2ef",
        help="s2ef: y/force/fixed LMDBs; is2re: y_init at pos and y_relaxed with zero force at pos_relaxed",
    )
    g.add_argument(
        "--forces",
        choices=("direct", "conservative"),
        default="direct",
        help="direct: l=1 head (EquiformerV2); conservative: minus the autograd gradient of the energy",
    )
    g.add_argument("--energy_coef", type=float, default=4.0, help="energy loss weight (EquiformerV2: 4)")
    g.add_argument(
        "--energy_loss",
        choices=ENERGY_LOSSES,
        default="mae",
        help="per-structure energy loss: mae (EquiformerV2's) or mse (weights the frames furthest off, "
        "e.g. high-energy initial placements, by their error)",
    )
    g.add_argument("--force_coef", type=float, default=100.0, help="force loss weight (EquiformerV2: 100)")
    g.add_argument(
        "--adsorbate_force_weight",
        type=float_in(0.0, low_open=True),
        default=1.0,
        help="weight of an adsorbate atom (tag 2) in the force loss's mean over free atoms (slab atoms: 1)",
    )
    g.add_argument(
        "--avg_num_atoms",
        type=float_in(0.0, low_open=True),
        default=1.0,
        help="the summed per-atom energies are divided by this. 1 (default): an adsorbate's few atoms "
        "carry an energy change of order std with order-one outputs; EquiformerV2 divides by "
        f"OC20's mean size, {OC20_AVG_NUM_ATOMS:.2f}, which left the demo world's energies "
        "unlearned (README, energy and forces)",
    )
    g.add_argument(
        "--normalizer_structures",
        type=int_at_least(0),
        default=10000,
        help="training structures the normaliser is fitted on (0: all)",
    )
    g.add_argument(
        "--element_refs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit per-element linear energy references",
    )
    g.add_argument(
        "--init_from",
        default=None,
        metavar="MODEL_PT",
        help="start from this S2EF checkpoint's weights and normaliser (same architecture; a fresh "
        "optimizer and schedule): fine-tuning on other data, or with --forces conservative after "
        "direct-force training (eSEN's recipe; the direct head is dropped)",
    )
    g.add_argument(
        "--energy_branch",
        type=int_at_least(0),
        default=0,
        metavar="K",
        help="with --init_from: the energy gets its own copy of the checkpoint's last K blocks, and only "
        "that branch and the energy readout train (every weight the forces use is frozen, so they stay "
        "the checkpoint's); the model then runs K more blocks per call. 0: energy and forces share the trunk",
    )
    args = parse_args(parser, argv)
    if args.energy_branch and not args.init_from:
        parser.error("--energy_branch needs --init_from (the branch starts as a copy of a trained model's blocks)")
    if args.forces == "conservative" and args.strategy == "Zero3":
        # The force loss differentiates -dE/dpos again through the weights; ZeRO-3 has released
        # its partitioned parameters by then (DeepSpeed 0.19 fails in backward).
        parser.error(
            "--forces conservative does not run under --strategy Zero3 (second derivatives through "
            "partitioned weights); use Zero2, Zero1 or DDP"
        )
    cfg = train_config(args)

    dictionary = Dictionary.load(args.dict_path)
    require = REQUIRED[args.data_kind]  # checked on ASE sources, naming the file and row / frame
    train_set = open_dataset(args.train_data_path, dictionary, require)
    valid_set = open_dataset(args.valid_data_path, dictionary, require) if args.valid_data_path else None
    if args.data_kind == "is2re":
        train_set = IS2REAsS2EF(train_set)
        valid_set = IS2REAsS2EF(valid_set) if valid_set is not None else None

    seed_everything(args.seed)  # same initial weights on every rank
    try:
        model = build_model(
            args.model_type,
            head="s2ef",
            forces=args.forces,
            energy_coef=args.energy_coef,
            force_coef=args.force_coef,
            adsorbate_force_weight=args.adsorbate_force_weight,
            energy_loss=args.energy_loss,
            energy_branch=args.energy_branch,
            avg_num_atoms=args.avg_num_atoms,
            checkpoint=args.activation_checkpointing,
            dictionary=dictionary.tokens,
            **args.backbone,
        )  # the model embeds with the dictionary the run is given
    except ValueError as err:  # e.g. an odd --backbone grid_resolution
        parser.error(str(err))
    meta = {"task": "s2ef", "dictionary": dictionary.tokens, "args": vars(args)}
    resume_dir = resolve_resume(cfg)
    if resume_dir is None and args.init_from:  # fine-tuning: weights and normaliser from the checkpoint
        free = FORCE_HEAD + (ENERGY_BRANCH if args.energy_branch else ())
        try:
            start = init_weights(model, args.init_from, free=free, may_differ=HEAD_SETTINGS)
        except (OSError, ValueError) as err:
            parser.error(f"--init_from: {err}")
        had = start["build_kwargs"].get("energy_branch", 0)
        if had not in (0, args.energy_branch):
            parser.error(
                f"--init_from: {args.init_from} has an energy branch of {had} blocks, not {args.energy_branch}"
            )
        if args.energy_branch:
            model.start_energy_branch(copy=not had)
        meta.update(normalizer=start.get("normalizer"), init_from=str(args.init_from))
    elif resume_dir is None:  # a fresh run: fit the normaliser its checkpoints will carry
        sample = random_subset(train_set, args.normalizer_structures, args.seed)
        sample = without_forces(sample) if args.data_kind == "is2re" else sample
        meta["normalizer"] = model.fit_normalizer(sample, fit_references=args.element_refs)
    if resume_dir is not None and args.energy_branch:
        model.start_energy_branch(copy=False)  # the resumed weights are loaded by train(); freeze the rest again
    return train(model, train_set, valid_set, cfg, meta, resume_dir=resume_dir)


if __name__ == "__main__":
    main()
