"""A report of a quickstart-style run: report.md with PNG figures, and report.json with every number.

    python -m sfm.tasks.report --run_dir runs/quickstart [--demo_dir data/demo] [--out DIR]

The run's folders are named by :class:`sfm.pipeline.layout.RunLayout` (its ``pipeline.json`` says
which layout and demo world a pipeline used; without one, the quickstart's layout and no demo world
unless --demo_dir). Reads (each optional; a missing input turns its section into a note saying
what is missing):
  diff/metrics.jsonl, s2ef/metrics.jsonl         training curves (trainer records)
  s2ef/model.pt + demo_dir/s2ef/val_id           energy / force parity (first --val_max frames)
  s2ef/eval_s2ef_val_id.json                     S2EF metrics next to baselines (eval_s2ef.py)
  gen/*/metrics.json                             sampling metrics (gen.py), baselines included
  score/*/scores.json, samples.csv, scored.lmdb  scoring / relaxation (score.py)
  demo_dir/is2re/val_id                          reference relaxed structures (pos_relaxed, y_relaxed)
  timings.jsonl                                  stage times (sfm.pipeline.stages)
Writes out (default run_dir/report)/report.md, report.json and *.png (matplotlib, Agg). An input
that exists but cannot be read fails its section: the report still shows the others, marks it
failed, and the command exits non-zero naming it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import traceback
from pathlib import Path

import matplotlib.pyplot as plt

from sfm.data.strict_json import write_json
from sfm.data.structure import sid_of
from sfm.eval import figures
from sfm.pipeline.layout import RunLayout
from sfm.pipeline.stages import read_timings

SKIP_KEYS = {
    "split",
    "step",
    "time",
    "lr",
    "grad_norm",
    "structures_per_s",
    "atoms_per_s",
    "structures_per_cpu_s",
    "epoch",
    "peak_mem_gb",
    "structures",
    "nonfinite_batches",
    "nonfinite_losses",
    "nonfinite_steps",
    "dropped_structures",
}


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _f(x, fmt=".3f") -> str:
    return format(x, fmt) if _finite(x) else "-"


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


class Report:
    def __init__(self, out: Path):
        self.out = out
        self.md: list[str] = []
        self.data: dict = {"sections": {}, "missing": [], "failed": []}

    def section(self, title: str):
        self.md += ["", f"## {title}", ""]

    def missing(self, what: str):
        self.md.append(f"_Missing: {what}._")
        self.data["missing"].append(what)

    def figure(self, fig, name: str, caption: str):
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=90)
        plt.close(fig)
        self.md += [f"![{caption}]({name})", ""]


# --------------------------------------------------------------------------------------------- training
def read_metrics(path: Path) -> list[dict]:
    """The trainer's records; ValueError naming the file and line of one that is not JSON."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {n}: not a JSON record ({err})") from err
    return out


def training_section(rep: Report, layout: RunLayout):
    rep.section("Training curves")
    out = {}
    for name, sub in (("diffusion", "diff"), ("s2ef", "s2ef")):
        path = layout.training_records(sub)
        if not path.exists():
            rep.missing(f"{name} training records ({path})")
            continue
        recs = read_metrics(path)
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in recs:
            for k, v in r.items():
                if k not in SKIP_KEYS and _finite(v):
                    series.setdefault((r.get("split", "train"), k), []).append((r["step"], v))
        if not series:
            rep.missing(f"{name}: no loss records in {path}")
            continue
        parts = sorted({k for _, k in series if k != "loss"})
        rep.figure(figures.training_curves(name, series), f"train_{sub}.png", f"{name} training curves")
        last = {f"{split}_{k}": pts[-1][1] for (split, k), pts in series.items()}
        steps = max(p[0] for pts in series.values() for p in pts)
        out[name] = {"steps": steps, "last": last, "parts": parts}
        rep.md.append(
            f"{name}: {steps} steps; last " + ", ".join(f"{k} {_f(v, '.4g')}" for k, v in sorted(last.items()))
        )
        rep.md.append("")
    rep.data["sections"]["training"] = out


# --------------------------------------------------------------------------------------------- s2ef
def s2ef_section(rep: Report, layout: RunLayout, demo_dir: Path | None, val_max: int):
    rep.section("Energy / force model (S2EF) on validation")
    out = {}
    ev = layout.s2ef_eval("val_id")
    if ev.exists():
        report = json.loads(ev.read_text())
        rows, table = [], {}
        for split, views in report.get("splits", {}).items():
            for view, m in views.items():
                if not isinstance(m, dict):
                    continue
                for pred, vals in _predictors(m).items():
                    rows.append(
                        [
                            split,
                            view,
                            pred,
                            _f(vals.get("energy_mae")),
                            _f(vals.get("force_mae")),
                            _f(vals.get("force_cos")),
                            _f(vals.get("efwt", vals.get("ewt"))),
                            m.get("structures", "-"),
                        ]
                    )
                    table[f"{split}/{view}/{pred}"] = vals
        rep.md.append("Model next to the training-mean and per-element linear-fit energy baselines (zero forces):")
        rep.md.append("")
        rep.md.append(
            _md_table(["split", "view", "predictor", "E MAE (eV)", "F MAE (eV/A)", "F cos", "EFwT/EwT", "n"], rows)
        )
        rep.md.append("")
        out["eval"] = table
    else:
        rep.missing(f"S2EF metrics ({ev}: run python -m sfm.tasks.eval_s2ef)")
    ckpt = layout.model("s2ef")
    val = demo_dir / "s2ef" / "val_id" if demo_dir else None
    if not ckpt.exists() or val is None or not val.exists():
        rep.missing(f"parity plots (need {ckpt} and the S2EF validation LMDB {val})")
        rep.data["sections"]["s2ef"] = out
        return
    import torch

    import sfm
    from sfm.data import LmdbDataset
    from sfm.data.views import labelled
    from sfm.eval.s2ef_eval import predict

    model = sfm.load_checkpoint(str(ckpt), map_location="cpu")
    ds = LmdbDataset(str(val))
    n = min(len(ds), val_max) if val_max else len(ds)
    with torch.no_grad():
        p = predict(model, (labelled(ds[i], "frames") for i in range(n)), batch_size=16, progress=False)
    e, et = p.energy.numpy(), p.target_energy.numpy()
    pars = {"structures": n, "energy_mae": float(abs(e - et).mean())}
    f = ft = None
    if p.forces is not None:
        free = p.free.numpy()
        f, ft = p.forces.numpy()[free].ravel(), p.target_forces.numpy()[free].ravel()
        pars["force_mae"] = float(abs(f - ft).mean())
        pars["free_atoms"] = int(free.sum())
    fig = figures.parity(et, e, ft, f)
    rep.md.append(f"Parity on the first {n} frames of `{val}` (EMT labels):")
    rep.md.append("")
    rep.figure(fig, "parity_s2ef.png", "energy and force parity")
    out["parity"] = pars
    rep.data["sections"]["s2ef"] = out


def _predictors(m: dict) -> dict:
    """view metrics (s2ef_eval.view_metrics) -> {predictor: {metric: value}}: model first, then the baselines."""
    return {who: {k: v for k, v in r.items() if _finite(v)} for who, r in m.items() if isinstance(r, dict)}


# --------------------------------------------------------------------------------------------- sampling
def sampling_section(rep: Report, layout: RunLayout):
    rep.section("Sampling metrics (generated vs baselines)")
    paths = layout.runs("gen", "metrics.json")
    if not paths:
        rep.missing(f"sampling metrics ({layout.root / 'gen'}/*/metrics.json from gen.py)")
        return
    from sfm.tasks.gen_table import COLUMNS, row

    rows, out = [], {}
    for path in paths:
        try:
            rows.append(row(path))
            m = json.loads(path.read_text())
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from err
        out[path.parent.name] = {
            "run": {k: v for k, v in m["run"].items() if not isinstance(v, (dict, list))},
            "metrics": m.get("metrics"),
        }
    rep.md.append(
        "`*_ode`: the trained model, few-step ODE sampler from noise; `*_denoise`: the same model started "
        "from the initial placement, taken as a noisy structure (`--t_start --no_renoise`); "
        "`*_initial`: the relaxation's starting placement; "
        "`*_random`: uniform random positions. Reference: the relaxed structures (pos_relaxed)."
    )
    rep.md.append("")
    rep.md.append(_md_table(COLUMNS, rows))
    rep.data["sections"]["sampling"] = out


# --------------------------------------------------------------------------------------------- scoring
SCORE_COLS = ("systems", "samples", "k", "judge", "converged_fraction", "relax_steps_mean", "disqualified")


def scoring_section(rep: Report, layout: RunLayout, demo_dir: Path | None, n_pictures: int):
    rep.section("Scoring and relaxation (S2EF model relaxes, EMT judges)")
    paths = layout.runs("score", "scores.json")
    if not paths:
        rep.missing(f"scores ({layout.root / 'score'}/*/scores.json from score.py)")
        return
    out, rows, succ_keys, anom_keys = {}, [], set(), set()
    for path in paths:
        s = json.loads(path.read_text())["summary"]
        out[path.parent.name] = {"summary": s}
        succ_keys |= {k for k in s if k.startswith("success@")}
        anom_keys |= set(s.get("anomalies", {}))
    succ = sorted(succ_keys, key=lambda k: int(k.split("@")[1]))
    anom = sorted(anom_keys)
    for name, v in out.items():
        s = v["summary"]
        rows.append(
            [
                name,
                *(s.get(c, "-") if not _finite(s.get(c)) else _f(s[c], ".3g") for c in SCORE_COLS),
                *(s.get("anomalies", {}).get(a, "-") for a in anom),
                *(_f(s.get(k)) for k in succ),
            ]
        )
    rep.md.append(
        "Each sample relaxed by the S2EF model (FIRE), ranked per system by its energy; the best one judged "
        "by EMT against the reference relaxed energy (success: within the threshold). Baselines: "
        "`inpaint_initial` (the starting placement), `inpaint_random`."
    )
    rep.md.append("")
    rep.md.append(_md_table(["run", *SCORE_COLS, *anom, *succ], rows))
    rep.md.append("")
    for path in paths:
        csv_path = path.parent / "samples.csv"
        if csv_path.exists():
            with open(csv_path) as f:
                out[path.parent.name]["samples"] = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]
    rep.data["sections"]["scoring"] = {k: {"summary": v["summary"]} for k, v in out.items()}
    histogram(rep, out, reference_energies(demo_dir))
    pictures(rep, layout, demo_dir, out, n_pictures)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def histogram(rep: Report, scored: dict, refs: dict):
    """One panel per scored run: its relaxed energies (EMT judge where available) over the reference relaxed
    energies of the same systems; x clipped to the reference range + 10 eV (the rest counted in the title)."""
    rep.md.append("### Energies of relaxed generated structures vs the reference relaxed ones")
    rep.md.append("")
    stats, panels = {}, []
    for name, v in scored.items():
        rows = v.get("samples") or []
        e = [r["judge_energy"] if _finite(r.get("judge_energy")) else r.get("energy") for r in rows]
        e = [x for x in e if _finite(x)]
        ref = [refs[s] for s in {str(int(r["sid"])) for r in rows if _finite(r.get("sid"))} if s in refs]
        if not e:
            continue
        stats[name] = {
            "n": len(e),
            "mean": sum(e) / len(e),
            "median": sorted(e)[len(e) // 2],
            "min": min(e),
            "max": max(e),
            "reference_n": len(ref),
            "reference_mean": sum(ref) / len(ref) if ref else None,
        }
        panels.append((name, e, ref))
    if not panels:
        rep.missing("per-sample energies (score/*/samples.csv)")
        return
    rep.figure(figures.energy_histograms(panels), "energy_hist.png", "energy histograms")
    rep.md.append(
        _md_table(
            ["run", "n", "mean (eV)", "median", "min", "max", "reference n", "reference mean"],
            [
                [
                    k,
                    v["n"],
                    _f(v["mean"]),
                    _f(v["median"]),
                    _f(v["min"]),
                    _f(v["max"]),
                    v["reference_n"],
                    _f(v["reference_mean"]),
                ]
                for k, v in stats.items()
            ],
        )
    )
    rep.data["sections"]["energy_histogram"] = stats


def reference_energies(demo_dir: Path | None) -> dict:
    """sid -> y_relaxed of the held-out split (demo_dir/is2re/val_id); {} when missing."""
    path = demo_dir / "is2re" / "val_id" if demo_dir else None
    if path is None or not path.exists():
        return {}
    from sfm.data import LmdbDataset

    ds = LmdbDataset(str(path))
    return {str(sid_of(d)): float(d.y_relaxed) for d in (ds[i] for i in range(len(ds))) if "y_relaxed" in d}


def pictures(rep: Report, layout: RunLayout, demo_dir: Path | None, scored: dict, n: int):
    rep.md += ["", "### Generated structures next to their references (best and worst by energy)", ""]
    inpaint = [k for k in scored if k.startswith("inpaint")]
    name = next((k for k in inpaint if k.endswith("_ode")), inpaint[0] if inpaint else None)
    ref_path = demo_dir / "is2re" / "val_id" if demo_dir else None
    lmdb = layout.run("score", name or "") / "scored.lmdb"
    if name is None or not lmdb.exists() or ref_path is None or not ref_path.exists():
        rep.missing(f"structure pictures (need score/inpaint_*/scored.lmdb and the reference {ref_path})")
        return
    from sfm.data import LmdbDataset, data_to_atoms

    refs = {}
    ds = LmdbDataset(str(ref_path))
    for i in range(len(ds)):
        d = ds[i]
        refs[str(sid_of(d))] = d
    sc = LmdbDataset(str(lmdb))
    best: dict[str, tuple[float, object]] = {}
    for i in range(len(sc)):
        d = sc[i]
        e = float(d.judge_energy) if "judge_energy" in d and math.isfinite(float(d.judge_energy)) else float(d.energy)
        sid = str(sid_of(d))
        if sid in refs and (sid not in best or e < best[sid][0]):
            best[sid] = (e, d)
    if not best:
        rep.missing("structure pictures (no scored sample matches a reference sid)")
        return

    def gap(sid):  # energy above the reference relaxed energy (judge scale when EMT judged)
        e, d = best[sid]
        ref = refs[sid]
        ref_e = (
            float(d.ref_energy) if "ref_energy" in d and math.isfinite(float(d.ref_energy)) else float(ref.y_relaxed)
        )
        return e - ref_e

    order = sorted(best, key=gap)
    picks = [("best", s) for s in order[: max(1, n // 2)]] + [("worst", s) for s in order[::-1][: max(1, n - n // 2)]]
    seen, chosen = set(), []
    for label, sid in picks:
        if sid not in seen:
            seen.add(sid)
            chosen.append((label, sid))

    out, rows = [], []
    for label, sid in chosen:
        e, d = best[sid]
        ref = refs[sid]
        g = gap(sid)
        rows.append(
            (
                f"{label}: sid {sid}, {d.atomic_numbers.numel()} atoms, E - E_ref = {g:+.3f} eV",
                data_to_atoms(d),
                data_to_atoms(ref, ref.pos_relaxed),
            )
        )
        out.append({"which": label, "sid": sid, "energy": e, "energy_above_reference": g})
    rep.figure(
        figures.structure_rows(rows), "structures.png", "generated (relaxed) structures next to their references"
    )
    rep.md.append(
        _md_table(
            ["which", "sid", "energy (eV)", "E - E_ref (eV)"],
            [[o["which"], o["sid"], _f(o["energy"]), _f(o["energy_above_reference"], "+.3f")] for o in out],
        )
    )
    rep.data["sections"]["pictures"] = {"run": name, "structures": out}


# --------------------------------------------------------------------------------------------- main
def timings(rep: Report, layout: RunLayout):
    """The last run of each stage that did its work (a stage reused on a rerun keeps its time)."""
    if not layout.timings.exists():
        return
    t = {stage: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"]} for stage, r in read_timings(layout.timings).items()}
    if t:
        rep.section("Stage times")
        rows = [[k, _f(v["wall_s"], ".0f"), _f(v["cpu_s"], ".0f")] for k, v in t.items()]
        rep.md.append(_md_table(["stage", "wall s", "CPU s"], rows))
        rep.data["sections"]["timings"] = t


def at_a_glance(sec: dict) -> list[str]:
    """A few lines with the headline numbers (all of them also in their sections)."""
    lines = []
    parity = sec.get("s2ef", {}).get("parity")
    if parity:
        lines.append(
            f"S2EF model on {parity['structures']} validation frames: energy MAE {_f(parity['energy_mae'])} eV, "
            f"force MAE {_f(parity.get('force_mae'))} eV/A"
        )
    for run, m in sec.get("sampling", {}).items():
        met = m.get("metrics") or {}
        k = met.get("k", 1)
        hit = met.get(f"match@{k}") or {}
        lines.append(
            f"sampling `{run}`: validity {_f(met.get('validity'))}, match@{k} {_f(hit.get('match_rate'))}, "
            f"ADwT@{k} {_f(met.get(f'adwt@{k}'))}"
        )
    for run, v in sec.get("scoring", {}).items():
        s = v["summary"]
        succ = [k for k in s if k.startswith("success@")]
        if succ:
            lines.append(
                f"placement `{run}`: "
                + ", ".join(f"{k} {_f(s[k])}" for k in sorted(succ, key=lambda k: int(k.split("@")[1])))
                + f" ({s.get('systems', '-')} systems, EMT judge)"
            )
    return lines


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--run_dir", required=True, help="run folder (RunLayout: diff/, s2ef/, gen/, score/ as the quickstart writes)"
    )
    p.add_argument("--demo_dir", help="demo world (s2ef/val_id, is2re/val_id); default: the pipeline's (pipeline.json)")
    p.add_argument("--out", help="report folder (default run_dir/report)")
    p.add_argument("--val_max", type=int, default=300, help="parity: first N validation frames (0: all)")
    p.add_argument("--pictures", type=int, default=4, help="structures pictured (half best, half worst)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        p.error(f"{run_dir}: no such folder")
    try:
        layout, settings = RunLayout.read(run_dir)
    except ValueError as err:
        p.error(str(err))
    demo = args.demo_dir or settings.get("demo_dir")
    demo_dir = Path(demo) if demo else None
    out = Path(args.out) if args.out else layout.report_dir
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    rep.md += [f"# sfm report: `{run_dir}`", "", f"Demo world: `{demo_dir}`. Every number here is also in report.json."]
    for name, fn in (
        ("training", lambda: training_section(rep, layout)),
        ("s2ef", lambda: s2ef_section(rep, layout, demo_dir, args.val_max)),
        ("sampling", lambda: sampling_section(rep, layout)),
        ("scoring", lambda: scoring_section(rep, layout, demo_dir, args.pictures)),
        ("timings", lambda: timings(rep, layout)),
    ):
        try:
            fn()
        except Exception as err:  # one broken section must not hide the others; the exit status says it failed
            traceback.print_exc()
            rep.md.append(f"_Failed: {type(err).__name__}: {err}._")
            rep.data["failed"].append(f"{name}: {type(err).__name__}: {err}")
    glance = at_a_glance(rep.data["sections"])
    rep.md[3:3] = ["", "## At a glance", "", *[f"- {line}" for line in glance]] if glance else []
    rep.data.update(run_dir=str(run_dir), demo_dir=str(demo_dir))
    (out / "report.md").write_text("\n".join(rep.md) + "\n")
    write_json(out / "report.json", rep.data)
    print(f"[report] {out / 'report.md'} ({len(rep.data['missing'])} missing inputs)")
    for m in rep.data["missing"]:
        print(f"[report]   missing: {m}")
    if rep.data["failed"]:
        sys.exit("[report] failed section(s):\n" + "\n".join(f"[report]   {f}" for f in rep.data["failed"]))
    return rep.data


if __name__ == "__main__":
    main()
