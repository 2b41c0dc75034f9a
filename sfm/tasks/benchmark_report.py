"""Collect the benchmark JSONs of one `scripts/benchmark.sh` run into one JSON and one Markdown page.

    python -m sfm.tasks.benchmark_report --out DIR name=path.json[#key] [...]

Each input is what a benchmark command wrote with ``--json``: a list of rows, a dict
whose ``rows`` / ``results`` entry is that list, or one flat dict (one row). The page gets the machine description
(CPU, cores, load, torch, accelerator) and one table per benchmark, numbers as measured.
"""

import argparse
import json
import os
import platform
from pathlib import Path

import torch

import sfm


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sfm": sfm.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def rows_of(result) -> list[dict]:
    """The list of result rows inside one benchmark's JSON (a flat dict is one row)."""
    if isinstance(result, list):
        return result
    for key in ("rows", "results"):
        if isinstance(result.get(key), list):
            return result[key]
    return [result]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table over their scalar fields (union of keys, first-seen order)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list))]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for benchmark.json and benchmark.md")
    parser.add_argument("inputs", nargs="+", help="name=path.json[#key], one per benchmark")
    args = parser.parse_args(argv)
    report = {"machine": machine(), "benchmarks": {}}
    page = ["# sfm benchmarks", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()), ""]
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"input '{item}' is not name=path.json")
        path, _, key = path.partition("#")  # path.json#key: that entry of the file
        result = json.loads(Path(path).read_text())
        result = result[key] if key else result
        report["benchmarks"][name] = result
        page += [f"## {name}", "", markdown_table(rows_of(result)), ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=1))
    (out / "benchmark.md").write_text("\n".join(page))
    print("\n".join(page))
    print(f"[benchmark] wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
