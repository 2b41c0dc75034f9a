"""Random adsorbate placements (the baseline for generated ones) as a sample LMDB for scoring.

    python -m sfm.tasks.place_random --data_path data/demo/is2re/val_id --k 5 --out runs/random/samples.lmdb

Each entry's adsorbate (tag 2, rigid, from `pos`) is rotated about z and put over a random
point of the surface, lowered to `--contact` A from the slab (sfm/data/random_placement.py).
"""

import argparse
from pathlib import Path

from sfm.data import LmdbDataset, write_lmdb
from sfm.data.random_placement import random_placements
from sfm.tasks.train_args import float_in, int_at_least


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data_path", required=True, help="IS2RE LMDB split (slab + adsorbate at pos)")
    p.add_argument("--k", type=int_at_least(1), default=5, help="placements per system")
    p.add_argument("--out", required=True, help="output LMDB file")
    p.add_argument("--max_inputs", type=int_at_least(1), default=None, help="first N systems only")
    p.add_argument("--contact", type=float_in(0.5), default=2.0, help="A from the first adsorbate atom to the slab")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not Path(args.data_path).exists():
        p.error(f"--data_path {args.data_path}: no such file or directory")
    dataset = LmdbDataset(args.data_path)
    n = len(dataset) if args.max_inputs is None else min(args.max_inputs, len(dataset))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        count = write_lmdb(args.out, random_placements((dataset[i] for i in range(n)), args.k, args.seed, args.contact))
    except ValueError as err:
        p.error(str(err))
    print(f"wrote {count} placements of {n} systems to {args.out}")
    return count


if __name__ == "__main__":
    main()
