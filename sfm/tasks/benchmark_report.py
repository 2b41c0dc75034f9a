"""Collect the benchmark JSONs of one `scripts/benchmark.sh` run into one JSON and one Markdown page.

    python -m sfm.tasks.benchmark_report --out DIR [--readme README.md] name=path.json[#key][@col,col] [...]

Each input is what a benchmark command wrote with ``--json``: a list of rows, a dict
whose ``rows`` / ``results`` entry is that list, or one flat dict (one row); or a pytest
JUnit XML file (``--junitxml``, a ``.xml`` path: one row per test); ``@col,col``
picks the table's columns (default: every scalar field). The page gets the machine description
(CPU, cores, load, torch, accelerator) and one table per benchmark, numbers as measured.
``--readme`` also puts the page, one heading level down, between the lines
``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->`` of that file.
"""

import argparse
import json
import os
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import sfm


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform's name stays
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
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


def junit_rows(path: Path) -> dict:
    """A pytest JUnit XML file as ``{"tests", "passed", "failed", "skipped", "rows": [{test, outcome, seconds}]}``."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        outcome = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
        rows.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time", 0.0)),
            }
        )
    count = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "skipped")}
    return {"tests": len(rows), **count, "rows": rows}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as a Markdown table over ``columns``, or their scalar fields (union of keys, first-seen order)."""
    keys: list[str] = list(columns or [])
    for row in rows if columns is None else []:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list))]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


MARKERS = ("<!-- benchmark:start -->", "<!-- benchmark:end -->")


def put_in_readme(path: Path, lines: list[str]) -> None:
    """Replace what lies between the benchmark markers of ``path`` by ``lines``."""
    text = path.read_text()
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no '{MARKERS[0]}' ... '{MARKERS[1]}' block to write the benchmarks into")
    head = text[: start + len(MARKERS[0])]
    path.write_text(head + "\n" + "\n".join(lines).strip() + "\n" + text[end:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for benchmark.json and benchmark.md")
    parser.add_argument("--readme", help="also write the page into this file, between the benchmark markers")
    parser.add_argument("inputs", nargs="+", help="name=path.json[#key][@col,col], one per benchmark")
    args = parser.parse_args(argv)
    report = {"machine": machine(), "benchmarks": {}}
    page = ["# sfm benchmarks", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()), ""]
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"input '{item}' is not name=path.json")
        path, _, columns = path.partition("@")
        path, _, key = path.partition("#")  # path.json#key: that entry of the file
        result = junit_rows(Path(path)) if path.endswith(".xml") else json.loads(Path(path).read_text())
        result = result[key] if key else result
        report["benchmarks"][name] = result
        page += [f"## {name}", "", markdown_table(rows_of(result), columns.split(",") if columns else None), ""]
    if args.readme:
        put_in_readme(Path(args.readme), ["#" + line if line.startswith("#") else line for line in page[2:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=1))
    (out / "benchmark.md").write_text("\n".join(page))
    print("\n".join(page))
    print(f"[benchmark] wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
