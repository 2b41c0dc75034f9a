"""Loader benchmark: structures/s for read + convert (cart -> frac) + PBC graph build.

    python -m sfm.data.bench_loader --data DATA/is2re/train [--workers 0 1 2] [--also aselmdb] [--json out.json]

Each DataLoader worker reads and validates structures, batches them (:func:`collate`,
which converts to wrapped fractional coordinates) and builds the radius graph, as a
training step would need. Throughput is measured after the first batch (so worker
start-up is excluded), with one torch thread per process. ``--data`` is anything
:func:`sfm.data.open_dataset` reads; ``--also aselmdb extxyz`` measures the same structures
again after writing them in those formats (to a temporary folder), one table row per format.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import torch

from sfm.data.ase_dataset import disconnect
from sfm.data.collate import collate
from sfm.data.convert import write_dataset
from sfm.data.dataset import open_dataset
from sfm.data.pbc_graph import radius_graph_pbc


def load_and_graph(data_list, cutoff: float, max_neighbors: int):
    """Collate ``data_list`` and attach its PBC graph (``edge_index``, ``offsets``)."""
    batch = collate(data_list)
    batch.edge_index, batch.offsets = radius_graph_pbc(batch.frac, batch.cell, batch.batch, cutoff, max_neighbors)
    return batch


def measure(dataset, workers: int, batch_size: int, cutoff: float, max_neighbors: int) -> dict:
    """Steady-state throughput of one pass over ``dataset`` with ``workers`` DataLoader workers."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=functools.partial(load_and_graph, cutoff=cutoff, max_neighbors=max_neighbors),
    )
    structures = edges = 0
    start = None
    for batch in loader:
        if start is None:  # first batch: includes worker start-up, not counted
            start = time.perf_counter()
            continue
        structures += batch.num_graphs
        edges += batch.edge_index.shape[1]
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "structures": structures,
        "seconds": seconds,
        "structures_per_s": structures / seconds,
        "edges_per_structure": edges / max(structures, 1),
    }


def graph_time(dataset, batch_size: int, cutoff: float, max_neighbors: int, limit: int = 256) -> float:
    """Mean seconds per structure of :func:`radius_graph_pbc` alone (batches already in memory)."""
    items = [dataset[i] for i in range(min(limit, len(dataset)))]
    batches = [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    start = time.perf_counter()
    for b in batches:
        radius_graph_pbc(b.frac, b.cell, b.batch, cutoff, max_neighbors)
    return (time.perf_counter() - start) / len(items)


def _resolve(path: Path) -> Path:
    """Accept an LMDB file/folder, or a demo-world root (uses its ``is2re/train``)."""
    if path.is_dir() and not any(path.glob("*.lmdb")) and (path / "is2re" / "train").is_dir():
        return path / "is2re" / "train"
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="any dataset path open_dataset reads, or a demo root")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cutoff", type=float, default=12.0, help="graph radius, A")
    parser.add_argument("--max-neighbors", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1, help="passes over the data per setting (small sets)")
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        choices=("aselmdb", "db", "extxyz"),
        help="also measure the same structures written in these formats",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    path = _resolve(args.data)
    given = open_dataset(path)
    with tempfile.TemporaryDirectory() as tmp:
        sources = {type(given).__name__: given}
        for suffix in args.also:
            copy = Path(tmp) / f"same.{suffix}"
            write_dataset(copy, (given[i] for i in range(len(given))))
            sources[suffix] = open_dataset(copy)
        rows, graph_s, mean_atoms = [], None, None
        for name, dataset in sources.items():
            if args.repeat > 1:
                dataset = torch.utils.data.ConcatDataset([dataset] * args.repeat)
            if mean_atoms is None:
                mean_atoms = sum(dataset[i].natoms for i in range(min(256, len(dataset)))) / min(256, len(dataset))
                print(
                    f"data {path}: {len(dataset)} structures (x{args.repeat}), {mean_atoms:.1f} atoms on average; "
                    f"batch {args.batch_size}, cutoff {args.cutoff} A, max_neighbors {args.max_neighbors}, "
                    "1 torch thread/process"
                )
                graph_s = graph_time(dataset, args.batch_size, args.cutoff, args.max_neighbors)
            rows += [
                {"format": name, **measure(dataset, w, args.batch_size, args.cutoff, args.max_neighbors)}
                for w in args.workers
            ]
        for suffix in args.also:  # before the temporary folder goes
            disconnect(Path(tmp) / f"same.{suffix}")
    print(f"{'format':>14} {'workers':>8} {'structures/s':>13} {'ms/structure':>13} {'edges/structure':>16}")
    for r in rows:
        print(
            f"{r['format']:>14} {r['workers']:>8} {r['structures_per_s']:>13.1f} {1e3 / r['structures_per_s']:>13.2f} "
            f"{r['edges_per_structure']:>16.0f}"
        )
    print(f"graph build alone (main process): {graph_s * 1e3:.2f} ms/structure")
    result = {
        "data": str(path),
        "structures": len(given) * args.repeat,
        "mean_atoms": mean_atoms,
        "batch_size": args.batch_size,
        "cutoff": args.cutoff,
        "max_neighbors": args.max_neighbors,
        "rows": rows,
        "graph_ms_per_structure": graph_s * 1e3,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
