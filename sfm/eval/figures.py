"""Matplotlib figures of the run report (sfm/tasks/report.py): each function takes plain numbers or
ase.Atoms and returns a Figure (Agg backend, no display needed); the caller saves and closes it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(name: str, series: dict[tuple[str, str], list[tuple[int, float]]]):
    """Left: the total loss; right: its parts. series: (split, key) -> [(step, value)]; log y when all > 0."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for (split, k), pts in sorted(series.items()):
        ax = axes[0] if k == "loss" else axes[1]
        ax.plot(*zip(*pts), ("-" if split == "train" else "o--"), ms=3, label=f"{split} {k}")
    for ax, title in zip(axes, ("loss", "loss parts")):
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{name}: {title}")
        if ax.lines:
            ax.legend(fontsize=7)
            if all(v > 0 for line in ax.lines for v in line.get_ydata()):
                ax.set_yscale("log")
    return fig


def _diag(ax, x, y):
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)


def parity(energy_ref, energy, force_ref=None, force=None):
    """Model vs reference: energies [B] (eV) and, if given, force components [M] (eV/A); MAE in the titles."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].scatter(energy_ref, energy, s=8, alpha=0.6)
    _diag(axes[0], energy_ref, energy)
    axes[0].set_xlabel("EMT energy (eV)")
    axes[0].set_ylabel("model energy (eV)")
    axes[0].set_title(f"energy, MAE {abs(energy - energy_ref).mean():.3f} eV ({len(energy)} frames)")
    if force is not None:
        axes[1].scatter(force_ref, force, s=3, alpha=0.3)
        _diag(axes[1], force_ref, force)
        axes[1].set_xlabel("EMT force component (eV/A)")
        axes[1].set_ylabel("model force component (eV/A)")
        axes[1].set_title(f"forces (free atoms), MAE {abs(force - force_ref).mean():.3f} eV/A")
    else:
        axes[1].set_axis_off()
    return fig


def energy_histograms(panels: list[tuple[str, list[float], list[float]]], above: float = 10.0):
    """One panel per (name, energies, reference energies), eV; x from the lowest value - 1 eV to the highest
    reference + `above` eV (the samples beyond are counted in the panel's title)."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), squeeze=False)
    for ax, (name, e, ref) in zip(axes[:, 0], panels):
        lo = min(ref + [min(e)]) - 1.0
        hi = (max(ref) if ref else min(e)) + above
        shown = [x for x in e if x <= hi]
        bins = [lo + i * (hi - lo) / 40 for i in range(41)]
        ax.hist(shown, bins=bins, alpha=0.6, label=f"{name} ({len(e)} samples)")
        if ref:
            ax.hist(ref, bins=bins, histtype="step", lw=2, color="k", label=f"reference y_relaxed ({len(ref)})")
        ax.set_title(f"{name}: {len(e) - len(shown)} samples above {hi:.1f} eV not shown", fontsize=8)
        ax.legend(fontsize=7)
        ax.set_ylabel("count")
    axes[-1, 0].set_xlabel("energy after relaxation (eV; EMT judge where available)")
    return fig


def structure_rows(rows: list[tuple[str, object, object]]):
    """One row per (caption, generated ase.Atoms, reference ase.Atoms): side (along y) and top views of each."""
    from ase.visualize.plot import plot_atoms

    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.2 * len(rows)), squeeze=False)
    for row, (caption, gen, ref) in zip(axes, rows):
        views = [
            (gen, "-90x", "generated+relaxed, side"),
            (gen, "", "generated+relaxed, top"),
            (ref, "-90x", "reference, side"),
            (ref, "", "reference, top"),
        ]
        for ax, (atoms, rot, title) in zip(row, views):
            plot_atoms(atoms, ax, rotation=rot, radii=0.6)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        row[0].text(0, 1.12, caption, transform=row[0].transAxes, fontsize=9)
    return fig
