"""The report's figures draw from plain numbers and ase.Atoms (Agg backend), and save as PNG."""

import numpy as np
from ase.build import add_adsorbate, fcc111

from sfm.eval import figures


def test_figures_save(tmp_path):
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    e = np.linspace(-3, 1, 8)
    figs = {
        "curves": figures.training_curves(
            "toy", {("train", "loss"): [(1, 2.0), (2, 1.0)], ("valid", "coord"): [(2, 0.5)]}
        ),
        "parity": figures.parity(e, e + 0.1, e, -e),
        "parity_energy_only": figures.parity(e, e + 0.1),
        "hist": figures.energy_histograms([("a", list(e) + [100.0], [-2.0, -1.0]), ("b", list(e), [])]),
        "structures": figures.structure_rows([("one", slab, slab), ("two", slab, slab)]),
    }
    for name, fig in figs.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert "1 samples above" in figs["hist"].axes[0].get_title()
