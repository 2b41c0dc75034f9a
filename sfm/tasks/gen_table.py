"""One markdown table of several sampling runs (their save_dir/metrics.json from sfm/tasks/gen.py).

    python -m sfm.tasks.gen_table runs/x/eval/*/metrics.json [--out table.md]

A row per run, named by its save_dir: mode, sampler, steps, network calls per sample,
systems x samples, validity, match rate / RMSE at 1 and at k samples, the match rate over every
sample (match@1 averaged over the k draws), ADwT and the median distance of the generated atoms
to the reference (A, mean over a structure's atoms) at 1 and at k samples, samples/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (
    "run",
    "mode",
    "sampler",
    "steps",
    "calls/sample",
    "systems x k",
    "valid",
    "match@1 (rmse)",
    "match@k (rmse)",
    "match/sample",
    "ADwT@1",
    "ADwT@k",
    "dist@1 (A)",
    "dist@k (A)",
    "samples/s",
)


def _num(x, fmt=".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _match(m: dict, key: str) -> str:
    hit = m.get(key)
    if not hit:
        return "-"
    return f"{_num(hit['match_rate'])} ({_num(hit['rmse'], '.4f')})"


def row(path: Path) -> list[str]:
    out = json.loads(Path(path).read_text())
    run, m = out["run"], out["metrics"] or {}
    k = m.get("k", 1)
    calls = run.get("network_calls_per_sample")
    steps = str(run["steps"]) + (f" from t={run['t_start']}" if run.get("t_start", 1.0) < 1 else "")
    steps += "" if run.get("renoise", True) else " (no noise)"
    steps += f", churn {run['churn']}" if run.get("churn") else ""
    return [
        Path(path).parent.name,
        run["mode"],
        run["sampler"],
        steps,
        _num(calls, ".0f"),
        f"{m.get('systems', m.get('samples', '-'))} x {k}",
        _num(m.get("validity")),
        _match(m, "match@1"),
        _match(m, f"match@{k}"),
        _num(m.get("per_sample", {}).get("match_rate")),
        _num(m.get("adwt@1")),
        _num(m.get(f"adwt@{k}")),
        _num(m.get("distance@1"), ".2f"),
        _num(m.get(f"distance@{k}"), ".2f"),
        _num(run.get("samples_per_s"), ".2f"),
    ]


def table(paths) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(p)) + " |" for p in paths]
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("metrics", nargs="+", help="metrics.json files of gen.py runs")
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args(argv)
    text = table(args.metrics)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
