"""Speed and memory of the S2EF model per batch of OC20-sized slabs.

``python -m sfm.models.bench [--device cuda] [--models tiny small eqv2_31m] [--json OUT]``

The batch: 4 synthetic slabs made with ASE (``fcc111`` Cu, Pt, Ag, Au, 4 x 4 x 5 = 80
atoms, 10 A of vacuum each side, atoms rattled by 0.05 A, subsurface fixed), the OC20
graph (12 A cutoff, 20 neighbours) unless ``--preset_graph``. Per model:

- ``forward_s``: inference, energy and direct forces under ``no_grad`` (eval mode);
- ``train_step_s``: ``loss(batch)`` and ``backward()`` (train mode);
- ``peak_mb_forward`` / ``peak_mb_train_step``: peak memory above the model and batch
  (CUDA: allocator peak; CPU: growth of the process's peak RSS, measured in a fresh
  process per model, so only a rough figure).
Times are medians over ``--repeats`` after one warm-up: wall clock (``*_s``) and this
process's CPU time (``*_cpu_s``; with one thread, the wall time it would take on an idle
core, which is what to compare on a shared machine); ``train_over_forward`` is their ratio
(CPU times). ``--profile`` adds, per model, where the time goes (torch.profiler, self time
per op, after the timed runs) in the eval forward, the training forward and the backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def synthetic_slabs(num: int = 4, seed: int = 0):
    """A batch (:func:`sfm.data.collate`) of ``num`` 80-atom fcc(111) slabs in the OC20 layout (float32)."""
    from ase.build import fcc111
    from torch_geometric.data import Data

    from sfm.data import collate

    rng = torch.Generator().manual_seed(seed)
    items = []
    for i in range(num):
        slab = fcc111(["Cu", "Pt", "Ag", "Au"][i % 4], size=(4, 4, 5), vacuum=10.0, periodic=True)
        pos = torch.tensor(slab.positions, dtype=torch.float32)
        pos = pos + 0.05 * torch.randn(pos.shape, generator=rng)
        tags = torch.tensor(slab.get_tags()) <= 2  # ase tags layers 1 (top) .. 5
        items.append(
            Data(
                pos=pos,
                cell=torch.tensor(slab.cell.array, dtype=torch.float32)[None],
                atomic_numbers=torch.tensor(slab.numbers),
                natoms=len(slab),
                tags=tags.long(),
                fixed=~tags,
                y=torch.tensor([float(i)]),
                force=0.1 * torch.randn(len(slab), 3, generator=rng),
                sid=i,
            )
        )
    return collate(items)


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_ops(fn, rows: int = 8) -> dict:
    """``{"total_s", "ops": [{"op", "self_s", "calls"}]}``: torch.profiler's self time per op
    (top ``rows``) of one call of ``fn`` (profiler overhead included; compare within a run)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {
        "total_s": round(sum(e.self_cpu_time_total for e in events) / 1e6, 3),
        "ops": [
            {"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3), "calls": e.count} for e in events[:rows]
        ],
    }


def bench_one(
    model_type: str,
    device: str,
    repeats: int,
    preset_graph: bool,
    bf16: bool,
    checkpoint: bool = False,
    profile: bool = False,
    num_layers: int | None = None,
) -> dict:
    """Measure one preset in this process (see the module docstring)."""
    from sfm.models import build_model

    device = torch.device(device)
    graph = {} if preset_graph else {"cutoff": 12.0, "max_neighbors": 20}
    torch.manual_seed(0)
    if num_layers is not None:
        graph["num_layers"] = num_layers
    model = build_model(model_type, head="s2ef", bf16=bf16, checkpoint=checkpoint, **graph).to(device)
    batch = synthetic_slabs().to(device)
    num_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        edges = model.backbone.build_graph(batch.atomic_numbers, batch.frac, batch.cell, batch.batch).src.numel()

    def forward():
        model.eval()
        with torch.no_grad():
            model.predict(batch)

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(batch)
        loss.backward()

    out = {
        "model": model_type,
        "device": str(device),
        "params": num_params,
        "atoms": int(batch.num_nodes),
        "edges": edges,
        "structures": int(batch.num_graphs),
        "threads": torch.get_num_threads(),
        "bf16": bf16,
        "checkpoint": checkpoint,
    }
    for name, fn in (("forward", forward), ("train_step", train_step)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_mb(device)
        fn()  # warm-up, and the memory peak
        _sync(device)
        out[f"peak_mb_{name}"] = round(_peak_mb(device) - base, 1)
        times, cpu_times = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        out[f"{name}_s"] = round(statistics.median(times), 4)
        out[f"{name}_cpu_s"] = round(statistics.median(cpu_times), 4)
    out["train_over_forward"] = round(out["train_step_cpu_s"] / out["forward_cpu_s"], 3)
    if profile:
        model.train()
        model.zero_grad(set_to_none=True)
        losses = []
        out["profile"] = {
            "forward": profile_ops(forward),
            "train_forward": profile_ops(lambda: losses.append(model.loss(batch)[0])),
            "backward": profile_ops(lambda: (losses.pop().backward(), _sync(device))),
        }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "eqv2_31m"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model after one warm-up")
    parser.add_argument(
        "--preset_graph", action="store_true", help="use each preset's cutoff/neighbours, not 12 A / 20"
    )
    parser.add_argument("--bf16", action="store_true", help="autocast the blocks to bfloat16")
    parser.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
    parser.add_argument("--profile", action="store_true", help="also print the top ops of forward and backward")
    parser.add_argument("--num_layers", type=int, help="override the preset's number of blocks (shorter profiles)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--_one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args(argv)
    if args._one:
        result = bench_one(
            args._one,
            args.device,
            args.repeats,
            args.preset_graph,
            args.bf16,
            args.checkpoint,
            args.profile,
            args.num_layers,
        )
        print(json.dumps(result))
        return
    results = []
    for model_type in args.models:
        flags = [f"--{f}" for f in ("preset_graph", "bf16", "checkpoint", "profile") if getattr(args, f)]
        flags += ["--num_layers", str(args.num_layers)] if args.num_layers is not None else []
        cmd = [
            sys.executable,
            "-m",
            "sfm.models.bench",
            "--_one",
            model_type,
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
            *flags,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"benchmark of {model_type} failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{result['model']:>10}  {result['params'] / 1e6:7.2f}M params  "
            f"{result['atoms']} atoms {result['edges']} edges  "
            f"forward {result['forward_s']:8.3f} s (cpu {result['forward_cpu_s']:.3f})  "
            f"fwd+bwd {result['train_step_s']:8.3f} s (cpu {result['train_step_cpu_s']:.3f}, "
            f"{result['train_over_forward']:.2f}x forward)  "
            f"peak {result['peak_mb_forward']:7.1f} / {result['peak_mb_train_step']:7.1f} MB  ({result['device']}, "
            f"{result['threads']} threads)",
            flush=True,
        )
        for part, prof in result.get("profile", {}).items():
            ops = ", ".join(f"{o['op'].removeprefix('aten::')} {o['self_s']:.2f}" for o in prof["ops"])
            print(f"{'':>10}  profile {part:>13}: {prof['total_s']:7.2f} s  {ops}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
