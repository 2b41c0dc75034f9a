"""The README's Python example (load a checkpoint, generate for an ase.Atoms slab, score with
SFMCalculator), executed here on tiny untrained checkpoints so that it keeps working."""

import math

import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

import sfm
from sfm.data import Dictionary
from sfm.models import build_model
from sfm.pipeline.checkpoint import save_consolidated


def api_example(diffusion_checkpoint, s2ef_checkpoint, steps=10, relax_steps=20):
    """Generate an adsorbate placement on a Cu(111) slab, then relax and score it. Returns (atoms, energy)."""
    from ase.optimize import FIRE

    from sfm.data import atoms_to_data, batch_to_atoms, collate
    from sfm.relax.calculator import SFMCalculator

    # the slab (tags 0: fixed subsurface, 1: surface) and the adsorbate to place (tag 2)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0)
    slab.set_tags([0 if t > 1 else 1 for t in slab.get_tags()])  # ase tags layers from the top: 1 = surface
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
    add_adsorbate(slab, molecule("CO"), height=2.0, position="ontop")  # any start: inpaint regenerates tag 2
    slab.set_tags([t if i < 12 else 2 for i, t in enumerate(slab.get_tags())])

    # generate: the slab is given (tags 0, 1), the adsorbate's positions are sampled (few-step ODE)
    diffusion = sfm.load_checkpoint(diffusion_checkpoint)
    batch = collate([atoms_to_data(slab)])
    out = diffusion.sample(
        batch, mode="inpaint", sampler="ode", steps=steps, generator=torch.Generator().manual_seed(0)
    )
    atoms = batch_to_atoms(out)[0]

    # score: energy and forces from the S2EF model, relaxed with any ASE optimizer
    atoms.calc = SFMCalculator(s2ef_checkpoint)
    FIRE(atoms, logfile=None).run(fmax=0.05, steps=relax_steps)
    return atoms, atoms.get_potential_energy()


def tiny_checkpoint(path, head):
    torch.manual_seed(0)
    model = build_model("tiny", head=head)
    save_consolidated(
        path,
        state_dict=model.state_dict(),
        build_kwargs=model.build_kwargs,
        meta={"task": "s2ef" if head == "s2ef" else "diff", "dictionary": Dictionary.load().tokens, "args": {}},
    )
    return path


def test_api_example(tmp_path):
    diff = tiny_checkpoint(tmp_path / "diff.pt", "diffusion")
    s2ef = tiny_checkpoint(tmp_path / "s2ef.pt", "s2ef")
    atoms, energy = api_example(diff, s2ef, steps=3, relax_steps=3)
    assert len(atoms) == 14 and math.isfinite(energy)
    assert (atoms.get_tags() == 2).sum() == 2
    assert atoms.get_forces().shape == (14, 3)
