"""Relaxation benchmark: structures relaxed per second, batched `relax_batch` vs ASE FIRE looping.

    python -m sfm.relax.bench [--model tiny|small|emt|CKPT.pt] [--n 32 128] [--device cpu cuda]
                              [--data LMDB] [--steps 100] [--fmax 0.05] [--max_atoms A] [--repeat R]
                              [--json out.json]

Both paths relax the same structures with the same FIRE (ASE parameters), fmax and step
cap, with the same model: `relax_batch` on one batch (model calls of at most `--max_atoms`
atoms), and `ase.optimize.FIRE` with `SFMCalculator` one structure at a time. With
`--model emt` both use EMT, which times the optimiser overhead alone. An untrained
preset's forces are tiny, so pass `--fmax 0`: every structure then takes exactly `--steps`
steps and the rate is per relaxation of that length. Structures come from `--data` (an
OC20 LMDB, e.g. the demo world) or, by default, from `make_slabs`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

ADSORBATES = ["O", "H", "N", "CO", "OH"]
SIZES = [(2, 2, 3), (3, 2, 3), (3, 3, 3), (2, 3, 4)]


def make_slabs(n: int, seed: int = 0, sizes=SIZES, metals=("Cu", "Pt", "Au"), noise=0.1):
    """n demo-like adslabs: fcc111 slab of Cu/Pt/Au (cycled) with an adsorbate on a random
    site, OC20 tags (0 subsurface held by FixAtoms, 1 top two layers, 2 adsorbate) and
    free atoms displaced by N(0, noise^2) A per coordinate. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = sizes[i % len(sizes)]
        slab = fcc111(metals[i % len(metals)], size=size, vacuum=7.0, periodic=True)  # as OC20
        layer = slab.get_tags()  # 1 = top layer
        ads = ADSORBATES[rng.integers(len(ADSORBATES))]
        add_adsorbate(
            slab, molecule(ads) if len(ads) > 1 else ads, 1.8, ["fcc", "hcp", "ontop", "bridge"][rng.integers(4)]
        )
        tags = np.concatenate([np.where(layer <= 2, 1, 0), np.full(len(slab) - len(layer), 2)])
        slab.set_tags(tags)
        slab.set_constraint(FixAtoms(mask=tags == 0))
        slab.positions += rng.normal(scale=noise, size=slab.positions.shape) * (tags > 0)[:, None]
        out.append(slab)
    return out


def load_structures(n: int, data: str | None, seed: int = 0):
    """n structures as (list of Data, list of ase.Atoms): from an OC20 LMDB (its first n;
    `pos` is the start) or from `make_slabs` with demo-world sizes (36-65 atoms)."""
    from torch_geometric.data import Batch

    from sfm.data.atoms import atoms_to_data, batch_to_atoms

    if data is None:
        atoms = make_slabs(n, seed=seed, sizes=[(3, 3, 4), (4, 3, 4), (4, 4, 4)])
        return [atoms_to_data(a, sid=i) for i, a in enumerate(atoms)], atoms
    from sfm.data import LmdbDataset

    ds = LmdbDataset(data)
    datas = [ds[i % len(ds)] for i in range(n)]
    return datas, batch_to_atoms(Batch.from_data_list(datas))


def build(model: str, device: str, force_std: float | None = None):
    """(relax_batch model_or_fn, ASE calculator factory) for 'emt', a preset name (untrained,
    seed 0; `force_std` scales its forces, eV/A) or a checkpoint path."""
    if model == "emt":
        from ase.calculators.emt import EMT

        from sfm.relax.emt import EMTFn

        return EMTFn(), EMT
    from sfm.models import PRESETS, build_model
    from sfm.relax.calculator import SFMCalculator, as_model

    if model in PRESETS:
        torch.manual_seed(0)
        net = build_model(model, head="s2ef").to(device).eval()
        if force_std is not None:
            net.normalizer.force_std.fill_(force_std)
    else:
        net = as_model(model, device)
    return net, lambda: SFMCalculator(net, device=device)


def run(
    n: int,
    device: str,
    model: str,
    data: str | None,
    fmax: float,
    steps: int,
    max_atoms: int | None = None,
    repeat: int = 1,
    skin: float | None = 1.0,
    force_std: float | None = None,
) -> dict:
    """Relax the same n structures both ways, `repeat` times alternating (best time of each
    kept: the machine may be shared); structures/s, steps, agreement of final energies."""
    from ase.optimize import FIRE
    from torch_geometric.data import Batch

    from sfm.relax.relax_batch import relax_batch

    fn, calc = build(model, device, force_std)
    datas, atoms_list = load_structures(n, data)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    relax_batch(fn, Batch.from_data_list(datas[:2]).to(device), fmax=fmax, steps=2)  # warm-up
    batch = Batch.from_data_list(datas).to(device)

    def batched():
        res = relax_batch(fn, batch, optimizer="fire", fmax=fmax, steps=steps, max_atoms=max_atoms, skin=skin)
        sync()
        return res

    def ase_loop():
        out = []
        for atoms in atoms_list:
            atoms = atoms.copy()
            atoms.calc = calc()
            opt = FIRE(atoms, logfile=None)
            converged = opt.run(fmax=fmax, steps=steps)
            out.append((atoms.get_potential_energy(), opt.nsteps, converged))
        return out

    t_batched = t_ase = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = batched()
        t_batched = min(t_batched, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ase = ase_loop()
        t_ase = min(t_ase, time.perf_counter() - t0)
    ase_e, ase_steps, ase_conv = (np.array(x, dtype=float) for x in zip(*ase))
    natoms = np.array([len(a) for a in atoms_list])
    de = np.abs(res.energy.double().cpu().numpy() - ase_e) / natoms
    return {
        "n": n,
        "device": device,
        "model": model,
        "max_atoms": max_atoms,
        "skin": skin,
        "atoms_mean": float(natoms.mean()),
        "batched_per_s": n / t_batched,
        "ase_per_s": n / t_ase,
        "ratio": t_ase / t_batched,
        "batched_s": t_batched,
        "ase_s": t_ase,
        "steps_batched": float(res.steps.double().mean()),
        "steps_ase": float(ase_steps.mean()),
        "converged_batched": float(res.converged.double().mean()),
        "converged_ase": float(ase_conv.mean()),
        "max_dE_per_atom": float(de.max()),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="emt, a preset (tiny, small, ...) or a checkpoint .pt")
    p.add_argument("--n", type=int, nargs="+", default=[32, 128], help="numbers of structures")
    p.add_argument("--device", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--data", help="OC20 LMDB to take structures from (default: make_slabs)")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=100, help="step cap per structure")
    p.add_argument("--max_atoms", type=int, help="relax_batch: atoms per model call (default: all at once)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the two paths this often, keep the best")
    p.add_argument(
        "--skin", type=float, default=1.0, help="relax_batch's neighbour-list skin, A (0: search every step)"
    )
    p.add_argument(
        "--force_std",
        type=float,
        help="untrained preset: its force scale, eV/A (e.g. 30: relaxations of about 100 steps)",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    print(vars(args))
    rows = []
    print(
        f"{'n':>5} {'device':>6} {'atoms':>6} {'batched/s':>10} {'ASE/s':>8} {'ratio':>7} "
        f"{'steps b/a':>11} {'conv b/a':>11} {'max dE/atom':>12}"
    )
    for device in args.device:
        for n in args.n:
            r = run(
                n,
                device,
                args.model,
                args.data,
                args.fmax,
                args.steps,
                args.max_atoms,
                args.repeat,
                args.skin or None,
                args.force_std,
            )
            rows.append(r)
            print(
                f"{n:>5} {device:>6} {r['atoms_mean']:>6.1f} {r['batched_per_s']:>10.2f} {r['ase_per_s']:>8.2f} "
                f"{r['ratio']:>6.1f}x {r['steps_batched']:>5.1f}/{r['steps_ase']:<5.1f} "
                f"{r['converged_batched']:>5.2f}/{r['converged_ase']:<5.2f} {r['max_dE_per_atom']:>12.2e}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
