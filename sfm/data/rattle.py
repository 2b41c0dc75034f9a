"""Off-path S2EF frames for the demo world, as OC20's rattled subset: perturbed relaxation frames
with the true potential's energy and forces.

    python -m sfm.data.rattle --data data/demo/s2ef/train --out data/demo/s2ef/train_rattled \
        [--per_system 4] [--shift 0.5] [--sigma 0.02] [--seed 0]

A relaxation trajectory samples one path downhill; a model trained on such frames alone knows
little beside it, and its own relaxations stop in minima the true potential does not have (on the
demo world, 21 of the 22 failed ML+SP relaxations ended where EMT's largest force was above
0.15 eV/A, up to 1.1: ``sfm.tasks.mlsp_bench``'s ``emt_fmax``).
OC20 ships frames off the path for this (S2EF "rattled" and "MD" data). This command makes the
demo world's: for each system of an S2EF split, ``per_system`` of its frames drawn at random,
the adsorbate (tag 2) shifted rigidly within the surface plane by up to ``shift`` A (uniform in a
disc) and every free atom displaced by Gaussian noise of ``sigma`` A; EMT gives the energy and
the forces (on every atom, fixed ones included, as the demo world stores them); ``fid`` stays the
source frame's (the fields are the split's own, so the shards batch together). The energy keeps
the frame's reference: ``y = y_frame + E(perturbed) - E(frame)``. A perturbed frame whose largest
force on a free atom exceeds the largest of the split's own frames is drawn again (at most 10
times per frame, then skipped), so no frame is more extreme than the relaxations themselves.

``OUT`` is a folder of shards (read as one dataset by every training command): ``frames.lmdb``,
a copy of the split's own frames, and ``rattled.lmdb``.
Train on it with ``--train_data_path OUT``. The folder is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sfm.data.atoms import data_to_atoms
from sfm.data.emt_world import check_emt_elements
from sfm.data.lattice import as_cell
from sfm.data.lmdb_dataset import LmdbDataset, LmdbWriter
from sfm.data.structure import ADSORBATE_TAG, fixed_mask, sid_of

TRIES = 10


def emt(atoms) -> tuple[float, np.ndarray]:
    """EMT potential energy (eV) and forces on every atom (eV/A, constraints not applied)."""
    from ase.calculators.emt import EMT

    atoms.calc = EMT()
    return float(atoms.get_potential_energy()), atoms.get_forces(apply_constraint=False)


def perturb(frame, rng: np.random.Generator, shift: float, sigma: float) -> torch.Tensor:
    """[N, 3] positions: the adsorbate shifted rigidly in the cell's a-b plane by up to ``shift``
    A, then Gaussian noise of ``sigma`` A on every free atom."""
    pos = frame.pos.double().clone()
    a, b = as_cell(frame.cell)[:2].double()
    normal = torch.linalg.cross(a, b)
    u = a / a.norm()
    v = torch.linalg.cross(normal / normal.norm(), u)
    radius, angle = shift * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
    adsorbate = frame.tags.reshape(-1) == ADSORBATE_TAG
    pos[adsorbate] += radius * (np.cos(angle) * u + np.sin(angle) * v)
    free = ~fixed_mask(frame)
    pos[free] += torch.from_numpy(rng.normal(0.0, sigma, (int(free.sum()), 3)))
    return pos


def rattled_frames(frames: list, per_system: int, shift: float, sigma: float, seed: int, progress: bool = True):
    """Yield the perturbed frames (module docstring), ``per_system`` per sid at most."""
    check_emt_elements(frames)
    by_sid = defaultdict(list)
    for d in frames:
        by_sid[sid_of(d)].append(d)
    cap = largest_free_force(frames)
    for sid, group in tqdm(sorted(by_sid.items()), desc="rattled frames", disable=not progress, mininterval=1.0):
        rng = np.random.default_rng([seed, sid])
        for frame in (group[i] for i in rng.choice(len(group), min(per_system, len(group)), replace=False)):
            e_frame = emt(data_to_atoms(frame))[0]
            for _ in range(TRIES):
                pos = perturb(frame, rng, shift, sigma)
                energy, forces = emt(data_to_atoms(frame, pos))
                if np.linalg.norm(forces[~fixed_mask(frame).numpy()], axis=1).max() <= cap:
                    out = frame.clone()
                    out.pos = pos.to(frame.pos.dtype)
                    out.y = float(frame.y) + energy - e_frame
                    out.force = torch.from_numpy(forces).to(frame.force.dtype)
                    yield out
                    break


@contextmanager
def frame_folder(out: Path):
    """A folder of S2EF shards written under a temporary name next to ``out`` (yielded), renamed
    onto ``out`` when the block completes, removed if it fails: nothing half-written is left."""
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def largest_free_force(frames: list) -> float:
    """The largest force (eV/A) on a free atom over ``frames``."""
    return max(float(d.force[~fixed_mask(d)].norm(dim=-1).max()) for d in frames)


def read_frames(data: Path, fields=("y", "force", "tags", "sid")) -> tuple[list[Path], list]:
    """The shards of an S2EF split (an LMDB file or a folder of them) and its frames; a clear
    error naming the split if it is missing or an entry lacks one of ``fields``."""
    shards = sorted(data.glob("*.lmdb")) if data.is_dir() else [data]
    if not shards or not all(s.is_file() for s in shards):
        raise FileNotFoundError(f"{data}: no S2EF LMDB here (a .lmdb file or a folder of them)")
    frames = list(LmdbDataset(data))
    missing = [i for i, d in enumerate(frames) if not all(k in d for k in fields)]
    if missing:
        raise ValueError(f"{data}: entries {missing[:5]} lack {' / '.join(fields)} (an S2EF split is needed)")
    return shards, frames


def write(data: str | os.PathLike, out: str | os.PathLike, per_system=4, shift=0.5, sigma=0.02, seed=0, progress=True):
    """Write the ``OUT`` folder (module docstring); return counts ``frames``, ``rattled``."""
    with frame_folder(Path(out)) as tmp:
        shards, frames = read_frames(Path(data))
        with LmdbWriter(tmp / "rattled.lmdb") as writer:
            count = 0
            for frame in rattled_frames(frames, per_system, shift, sigma, seed, progress):
                writer.append(frame)
                count += 1
        for i, shard in enumerate(shards):
            target = tmp / (f"frames_{i}.lmdb" if len(shards) > 1 else "frames.lmdb")
            shutil.copyfile(shard, target)  # a copy: LMDB refuses a second handle on one file (a hard link)
    return {"frames": len(frames), "rattled": count}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m sfm.data.rattle",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="an S2EF split (LMDB file or folder of shards)")
    p.add_argument("--out", required=True, help="the folder to write (frames + rattled shards)")
    p.add_argument("--per_system", type=int, default=4, help="perturbed frames per system")
    p.add_argument("--shift", type=float, default=0.5, help="largest rigid in-plane shift of the adsorbate (A)")
    p.add_argument("--sigma", type=float, default=0.02, help="Gaussian noise on every free atom (A)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.per_system < 1 or args.shift < 0 or args.sigma < 0:
        p.error("--per_system must be >= 1, --shift and --sigma >= 0")
    try:
        counts = write(args.data, args.out, args.per_system, args.shift, args.sigma, args.seed, not args.no_progress)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        p.error(str(err))
    print(f"{args.out}: {counts['frames']} frames of {args.data} + {counts['rattled']} rattled")
    return counts


if __name__ == "__main__":
    main()
