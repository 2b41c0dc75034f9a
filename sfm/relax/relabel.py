"""Frames where the model's own relaxations end, labelled by the true potential: one round of
active learning on where the model stops and the true potential still pulls.

    python -m sfm.relax.relabel --checkpoint RUN/model.pt --data data/demo/s2ef/train --out RUN/relabel \
        [--num_systems 300] [--shift 0] [--mix 3] [--optimizer lbfgs] [--steps 300] [--fmax 0.05] [--seed 0]

A model trained on relaxation paths stops some of its own relaxations where the true potential
still pulls (:mod:`sfm.tasks.mlsp_bench`'s ``emt_fmax``), and which configurations those are is
known only once it is trained. For ``num_systems`` systems of an S2EF split (drawn with
``seed``) this command relaxes the system's first frame (the lowest ``fid``: the initial
placement; with ``shift``, its adsorbate moved rigidly in the surface plane by up to ``shift`` A
as :mod:`sfm.data.rattle` does, a start the model has not seen) with the model, as ML+SP does
(L-BFGS by default, subsurface fixed), and labels the end point with EMT: the energy on the
frame's reference, ``y = y_frame + E(end) - E(frame)``, and the forces on every atom, fixed ones
included, as the demo world stores them. ``fid`` stays the source frame's, so the fields are the
split's own and the shards batch together. An end point whose largest force on a free atom
exceeds the largest of the split's own frames (a model relaxation that went astray) is left out
and counted (``left_out``). Also counted, and kept: the end points where EMT's largest force on
a free atom is above three times ``fmax`` (``off_minimum``: the model stopped where EMT still
pulls, which is what the labels teach it).

``OUT`` is a folder of shards (read as one dataset by every training command):
``relabelled.lmdb`` and ``frames.lmdb``, ``mix`` times as many of the split's own frames, drawn
at random, so that fine-tuning on ``OUT`` (``train_s2ef.py --init_from RUN/model.pt
--train_data_path OUT``) keeps what the model learned. Written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from sfm import load_checkpoint
from sfm.data.atoms import data_to_atoms
from sfm.data.emt_world import check_emt_elements
from sfm.data.lmdb_dataset import LmdbWriter
from sfm.data.rattle import emt, frame_folder, largest_free_force, perturb, read_frames
from sfm.data.structure import fixed_mask, sid_of
from sfm.relax.relax_structures import RelaxSettings, add_relax_flags, relax_settings, relax_structures


def first_frames(frames: list, num_systems: int, seed: int) -> list:
    """The lowest-``fid`` frame of ``num_systems`` systems drawn at random (all if fewer), by sid."""
    first = {}
    for d in frames:
        sid = sid_of(d)
        if sid not in first or int(d.fid) < int(first[sid].fid):
            first[sid] = d
    sids = sorted(first)
    chosen = np.random.default_rng(seed).choice(len(sids), min(num_systems, len(sids)), replace=False)
    return [first[sids[i]] for i in sorted(chosen)]


def relabelled_frames(model, frames: list, num_systems: int, settings, seed: int = 0, shift: float = 0.0):
    """The labelled end points of the model's relaxations (module docstring) and counts
    ``left_out`` (a force above the split's largest) and ``off_minimum``; ``settings``: a
    :class:`~sfm.relax.relax_structures.RelaxSettings`."""
    check_emt_elements(frames)
    starts = first_frames(frames, num_systems, seed)
    rng = np.random.default_rng([seed, 2])
    pos = [perturb(d, rng, shift, 0.0).to(d.pos.dtype) if shift else d.pos for d in starts]
    relaxed = relax_structures(model, starts, settings, desc="model relaxation", pos=pos)
    cap, out, off_minimum = largest_free_force(frames), [], 0
    for frame, r in zip(starts, relaxed):
        end = r["pos"].to(frame.pos.dtype)
        energy, forces = emt(data_to_atoms(frame, end))
        fmax = np.linalg.norm(forces[~fixed_mask(frame).numpy()], axis=1).max()
        if fmax > cap:
            continue
        off_minimum += int(fmax > 3 * settings.fmax)
        new = frame.clone()
        new.pos = end
        new.y = float(frame.y) + energy - emt(data_to_atoms(frame))[0]
        new.force = torch.from_numpy(forces).to(frame.force.dtype)
        out.append(new)
    return out, {"left_out": len(starts) - len(out), "off_minimum": off_minimum}


def write(model, data, out, num_systems=300, mix=3, settings=None, seed=0, shift=0.0) -> dict:
    """Write the ``OUT`` folder (module docstring); return counts ``relabelled``, ``left_out``,
    ``off_minimum``, ``frames`` (the split's own frames written)."""
    settings = settings or RelaxSettings(optimizer="lbfgs")
    with frame_folder(Path(out)) as tmp:
        _, frames = read_frames(Path(data), ("y", "force", "tags", "sid", "fid"))
        relabelled, counts = relabelled_frames(model, frames, num_systems, settings, seed, shift)
        rng = np.random.default_rng([seed, 1])
        kept = rng.choice(len(frames), min(mix * len(relabelled), len(frames)), replace=False)
        for name, items in (("relabelled", relabelled), ("frames", [frames[i] for i in sorted(kept)])):
            with LmdbWriter(tmp / f"{name}.lmdb") as writer:
                for frame in items:
                    writer.append(frame)
    return {"relabelled": len(relabelled), **counts, "frames": len(kept)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m sfm.relax.relabel",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="the S2EF model whose relaxations to label (model.pt)")
    p.add_argument("--data", required=True, help="an S2EF split (LMDB file or folder of shards)")
    p.add_argument("--out", required=True, help="the folder to write (relabelled + mixed-in frames)")
    p.add_argument("--num_systems", type=int, default=300, help="systems relaxed by the model")
    p.add_argument("--shift", type=float, default=0.0, help="largest rigid in-plane shift of the adsorbate's start (A)")
    p.add_argument("--mix", type=int, default=3, help="the split's own frames written per relabelled frame")
    add_relax_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.num_systems < 1 or args.mix < 0 or args.steps < 1 or args.shift < 0:
        p.error("--num_systems and --steps must be >= 1, --mix and --shift >= 0")
    if not os.path.isfile(args.checkpoint):
        p.error(f"--checkpoint {args.checkpoint}: no such file")
    settings = relax_settings(args)
    model = load_checkpoint(args.checkpoint)
    try:
        counts = write(model, args.data, args.out, args.num_systems, args.mix, settings, args.seed, args.shift)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        p.error(str(err))
    print(
        f"{args.out}: {counts['relabelled']} model relaxations labelled by EMT ({counts['off_minimum']} "
        f"ending where EMT pulls above {3 * args.fmax:g} eV/A; {counts['left_out']} left out) "
        f"+ {counts['frames']} frames of {args.data}"
    )
    return counts


if __name__ == "__main__":
    main()
