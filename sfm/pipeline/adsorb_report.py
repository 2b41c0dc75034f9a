"""Outputs of an adsorption search (:mod:`sfm.pipeline.adsorb`): table, structures, report.

    write_outputs(out, cfg, rows, summary, relaxed, best)

``placements.csv`` / ``placements.json`` (rows; the json adds ``summary`` and ``config``),
``relaxed.extxyz`` (every relaxed placement: energy, forces, and in ``info`` index, source,
adsorption_energy, anomalies, rank), ``best_{r}.cif`` (r = 0 .. top_k - 1), ``report.md`` with
``figures/best_{r}_top.png`` / ``_side.png`` (ase.visualize.plot, 2 x 2 cells) and
``figures/energies_by_source.png``. Every file is written whole (temporary name, renamed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sfm.data.anomaly import KINDS

CSV_FIELDS = ("index", "source", "energy", "adsorption_energy", "converged", "steps", "fmax", "anomalies", "rank")
JUDGE_FIELDS = ("judge_energy", "judge_adsorption_energy")  # with a judge (AdsorbML's ML+SP)
FIGURES = 3  # best placements pictured in the report


def _replace(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_outputs(out: Path, cfg, rows: list[dict], summary: dict, relaxed: list, best: list) -> None:
    """All outputs of the module docstring into ``out``."""
    import ase.io

    from sfm.pipeline.adsorb import write_extxyz

    out.mkdir(parents=True, exist_ok=True)
    fields = CSV_FIELDS + (JUDGE_FIELDS if cfg.judge else ())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in fields})
    _replace(out / "placements.csv", lambda p: p.write_text(buf.getvalue()))
    doc = {"summary": summary, "config": asdict(cfg), "rows": rows}
    _replace(out / "placements.json", lambda p: p.write_text(json.dumps(_json_safe(doc), indent=1) + "\n"))

    frames = []
    for r, atoms in zip(rows, relaxed):
        a = atoms.copy()
        a.calc = atoms.calc
        a.info.update(
            index=r["index"],
            source=r["source"],
            adsorption_energy=r["adsorption_energy"],
            anomalies=r["anomalies"] or "none",
            rank=-1 if r["rank"] is None else r["rank"],
        )
        frames.append(a)
    write_extxyz(out / "relaxed.extxyz", frames)
    for old in out.glob("best_*.cif"):
        old.unlink()
    for rank, atoms in enumerate(best[: cfg.top_k]):
        _replace(out / f"best_{rank}.cif", lambda p, a=atoms: ase.io.write(p, a, format="cif"))
    pictures = draw(out / "figures", rows, best[:FIGURES])
    _replace(out / "report.md", lambda p: p.write_text(report(summary, rows, cfg, pictures)))


def draw(folder: Path, rows: list[dict], best: list) -> dict:
    """Top and side views of ``best`` and the energies by source; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.visualize.plot import plot_atoms

    folder.mkdir(parents=True, exist_ok=True)
    names = {"views": []}
    for rank, atoms in enumerate(best):
        shown = atoms.repeat((2, 2, 1))
        views = []
        for view, rotation in (("top", ""), ("side", "-90x")):
            fig, ax = plt.subplots(figsize=(4, 4))
            plot_atoms(shown, ax, rotation=rotation, radii=0.8)
            ax.set_axis_off()
            name = f"best_{rank}_{view}.png"
            _replace(folder / name, lambda p, f=fig: f.savefig(p, dpi=90, bbox_inches="tight", format="png"))
            plt.close(fig)
            views.append(name)
        names["views"].append(views)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sources = [s for s in ("generated", "refined", "heuristic", "random") if any(r["source"] == s for r in rows)]
    for x, source in enumerate(sources):
        mine = [r for r in rows if r["source"] == source]
        jitter = np.linspace(-0.15, 0.15, len(mine)) if len(mine) > 1 else [0.0]
        for dx, r in zip(jitter, mine):
            ax.plot(x + dx, r["adsorption_energy"], "o" if r["valid"] else "x", color=f"C{x}", alpha=0.8)
    ax.set_xticks(range(len(sources)), sources)
    ax.set_ylabel("adsorption energy (eV)")
    ax.set_title("relaxed placements (x: anomalous)")
    fig.tight_layout()
    _replace(folder / "energies_by_source.png", lambda p: fig.savefig(p, dpi=90, format="png"))
    plt.close(fig)
    names["energies"] = "energies_by_source.png"
    return names


def _e(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def report(summary: dict, rows: list[dict], cfg, pictures: dict) -> str:
    """report.md text."""
    lines = [
        f"# Adsorption search: {summary['adsorbate']} ({summary['adsorbate_formula']}) on {summary['slab']}",
        "",
        f"- relaxer: {summary['relaxer']}, fmax {cfg.fmax} eV/A, at most {cfg.steps} steps",
        f"- energies: {summary['energy']}: {summary['energy_note']}",
    ]
    refs = summary.get("references")
    if refs:
        elements = ", ".join(f"{k} {v:.3f}" for k, v in refs["elements"].items())
        lines.append(f"- clean slab energy {refs['slab_energy']:.3f} eV; gas references (eV/atom): {elements}")
        if refs["not_converged"]:
            lines.append(f"- **warning**: not converged within the step cap: {', '.join(refs['not_converged'])}")
    if summary.get("judge"):
        lines.append(f"- judge (AdsorbML's ML+SP): {summary['judge']}")
    lines += [f"- {summary['placements']} placements; anomalies as AdsorbML (sfm.data.anomaly)", ""]
    best = summary.get("best")
    if best is None:
        lines += ["**No valid placement**: every relaxed placement is anomalous (see the table).", ""]
    else:
        state = "converged" if best["converged"] else "NOT converged"
        lines += [
            (
                f"**Lowest adsorption energy: {best['adsorption_energy']:.3f} eV** ({best['source']} placement "
                f"{best['index']}, {state} in {best['steps']} steps)"
            ),
            "",
        ]
    judged = summary.get("judge_best")
    if judged is not None:
        lines += [
            (
                f"**Lowest judged adsorption energy: {judged['judge_adsorption_energy']:.3f} eV** (rank "
                f"{judged['rank']}, {judged['source']} placement {judged['index']})"
            ),
            "",
        ]
    header = ["rank", "placement", "source", "E_ads (eV)", "energy (eV)", "converged", "steps"]
    header += ["judge E_ads (eV)"] if summary.get("judge") else []
    lines += ["## Best placements", "", "| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])
    for r in ranked[: cfg.top_k]:
        cells = [
            r["rank"],
            r["index"],
            r["source"],
            f"{r['adsorption_energy']:.3f}",
            f"{r['energy']:.3f}",
            r["converged"],
            r["steps"],
        ] + ([_e(r["judge_adsorption_energy"])] if summary.get("judge") else [])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for rank, (top, side) in enumerate(pictures["views"]):
        lines.append(f"rank {rank}: ![top](figures/{top}) ![side](figures/{side})")
    header = ["source", "placements", "valid", *KINDS, "converged", "best E_ads", "median E_ads", "best rank"]
    lines += ["", "## By source", "", "| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    for source, s in summary["by_source"].items():
        lines.append(
            f"| {source} | {s['placements']} | {s['valid']} | "
            + " | ".join(str(s[k]) for k in KINDS)
            + f" | {s['converged']} | {_e(s['best'])} | {_e(s['median'])} | "
            f"{'-' if s['best_rank'] is None else s['best_rank']} |"
        )
    cifs = min(cfg.top_k, len(ranked))
    files = (
        "Files: placements.csv / placements.json (every placement), relaxed.extxyz (relaxed structures with "
        f"energies and forces){f', best_0.cif .. best_{cifs - 1}.cif' if cifs else ''}."
    )
    lines += ["", f"![energies by source](figures/{pictures['energies']})", "", files, ""]
    return "\n".join(lines)
