"""Train the diffusion model (fractional coordinates on the torus + full 3x3 lattice) on IS2RE LMDBs.

    torchrun [--nproc_per_node N --nnodes M ...] sfm/tasks/train_diff.py \
        --train_data_path data/is2re/all/train --valid_data_path data/is2re/all/val_id \
        --save_dir runs/diff --model_type eqv2_31m --strategy Zero2 --bf16 ...
    python -m sfm.tasks.train_diff ... --strategy Single        (one process)

`--target pos_relaxed` (default) generates relaxed structures, `--target pos` initial ones.
`--mode_probs` is the training mix of conditioning modes (csp: types given; lattice_given;
inpaint: lattice and the atoms with tags in `--given_tags` given, the rest generated); one
checkpoint serves all three. `--placement_prob` trains that fraction of the inpaint
structures on the path from their initial placement (the noisy state at `--placement_t`)
to `pos_relaxed` (sfm/models/diffusion/model.py), for `gen.py --t_start PLACEMENT_T
--no_renoise`. The lattice prior and reference axis lengths are fitted on at most
`--normalizer_structures` training cells at the start of a fresh run; they live in the
model's buffers, so checkpoints carry them and a resumed run keeps them.
"""

from sfm.data import Dictionary, open_dataset, parse_tags
from sfm.data.structure import SLAB_TAGS
from sfm.models import PRESETS, build_model
from sfm.models.diffusion.model import DEFAULT_MODE_PROBS
from sfm.pipeline.batches import random_subset
from sfm.pipeline.trainer import resolve_resume, seed_everything, train
from sfm.tasks.train_args import build_parser, int_at_least, parse_args, train_config


def main(argv=None) -> dict:
    parser = build_parser("Train the diffusion model", "runs/diff", sorted(PRESETS))
    g = parser.add_argument_group("diffusion")
    g.add_argument(
        "--target",
        choices=("pos_relaxed", "pos"),
        default="pos_relaxed",
        help="positions the generated atoms are drawn toward",
    )
    g.add_argument(
        "--mode_probs",
        default=",".join(f"{k}={v}" for k, v in DEFAULT_MODE_PROBS.items()),
        help="training mix of conditioning modes (csp, lattice_given, inpaint)",
    )
    g.add_argument(
        "--given_tags",
        default=",".join(map(str, SLAB_TAGS)),
        help="tags of the atoms given in inpaint mode (0,1: the slab)",
    )
    g.add_argument(
        "--placement_prob",
        type=float,
        default=0.0,
        help="fraction of inpaint structures trained on the path from their initial placement `pos` "
        "(the noisy state at --placement_t) to pos_relaxed; sample with gen.py --t_start PLACEMENT_T "
        "--no_renoise",
    )
    g.add_argument("--placement_t", type=float, default=0.55, help="the time a placement is taken to be at")
    g.add_argument(
        "--normalizer_structures",
        type=int_at_least(0),
        default=10000,
        help="training structures the lattice prior is fitted on (0: all)",
    )
    args = parse_args(parser, argv)
    try:
        given_tags = parse_tags(args.given_tags)
    except ValueError as err:
        parser.error(str(err))
    cfg = train_config(args)

    dictionary = Dictionary.load(args.dict_path)
    train_set = open_dataset(args.train_data_path, dictionary)
    valid_set = open_dataset(args.valid_data_path, dictionary) if args.valid_data_path else None

    seed_everything(args.seed)  # same initial weights on every rank
    try:
        model = build_model(
            args.model_type,
            head="diffusion",
            target=args.target,
            mode_probs=args.mode_probs,
            given_tags=given_tags,
            placement_prob=args.placement_prob,
            placement_t=args.placement_t,
            checkpoint=args.activation_checkpointing,
            dictionary=dictionary.tokens,
            **args.backbone,
        )
    except ValueError as err:  # a bad --mode_probs / --target / --placement_* reaches the user as a flag error
        parser.error(str(err))
    meta = {"task": "diffusion", "dictionary": dictionary.tokens, "args": vars(args)}
    resume_dir = resolve_resume(cfg)
    if resume_dir is None:  # a fresh run: fit the normaliser its checkpoints will carry
        meta["normalizer"] = model.fit_normalizer(random_subset(train_set, args.normalizer_structures, args.seed))
    return train(model, train_set, valid_set, cfg, meta, resume_dir=resume_dir)


if __name__ == "__main__":
    main()
