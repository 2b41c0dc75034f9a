"""Training throughput (structures/s) and peak memory per process, per model preset and strategy.

    python -m sfm.pipeline.bench [--data data/demo_small] [--task diff] [--models tiny small] \
        [--setups Single:1:1 Single:1:2 Zero1:2:1] [--steps 12] [--batch_size 4] [--json bench.json]

Each setup `STRATEGY:P[:T]` runs the real entry point (sfm/tasks/train_$task.py) on P processes
(torchrun when P > 1) of T threads each (OMP_NUM_THREADS; default cores // P) for `--steps` optimizer steps on the demo world's train split, and reads
its metrics.jsonl: throughput is the median over log windows after the first (which holds
start-up and warm-up), in structures/s of all processes together (wall clock) and in
structures per CPU-second of all processes (what a step costs, robust to a machine shared
with other work); memory is the peak of rank 0 (max RSS on CPU, CUDA allocator peak on GPU). The demo world is built first if missing (--small).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_setup(
    data: Path,
    task: str,
    model: str,
    strategy: str,
    nproc: int,
    threads: int,
    steps: int,
    batch_size: int,
    log_every: int,
) -> dict:
    kind = "is2re" if task == "diff" else "s2ef"
    with tempfile.TemporaryDirectory() as tmp:
        save_dir = Path(tmp) / "run"
        entry = ["-m", f"sfm.tasks.train_{task}"]
        launcher = (
            [sys.executable]
            if nproc == 1
            else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        )
        cmd = (
            launcher
            + entry
            + [
                "--train_data_path",
                str(data / kind / "train"),
                "--save_dir",
                str(save_dir),
                "--model_type",
                model,
                "--strategy",
                strategy,
                "--train_batch_size",
                str(batch_size),
                "--total_num_steps",
                str(steps),
                "--warmup_num_steps",
                "1",
                "--log_interval",
                str(log_every),
                "--save_interval",
                str(10 * steps),
            ]
        )
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        rows = [json.loads(line) for line in open(save_dir / "metrics.jsonl")]
    train = [row for row in rows if row["split"] == "train"]
    windows = [row["structures_per_s"] for row in train[1:]] or [train[-1]["structures_per_s"]]
    return {
        "task": task,
        "model": model,
        "strategy": strategy,
        "processes": nproc,
        "threads_per_process": threads,
        "batch_size_per_process": batch_size,
        "steps": steps,
        "structures_per_s": round(statistics.median(windows), 3),
        "atoms_per_s": round(
            statistics.median([row["atoms_per_s"] for row in train[1:]] or [train[-1]["atoms_per_s"]]), 1
        ),
        "structures_per_cpu_s": round(
            statistics.median(
                [row["structures_per_cpu_s"] for row in train[1:]] or [train[-1]["structures_per_cpu_s"]]
            ),
            3,
        ),
        "peak_mem_gb_rank0": round(max(row["peak_mem_gb"] for row in train), 3),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", default=str(ROOT / "data" / "demo_small"), help="demo-world root (built with --small if missing)"
    )
    p.add_argument("--task", choices=("diff", "s2ef"), default="diff")
    p.add_argument("--models", nargs="+", default=["tiny", "small"])
    p.add_argument(
        "--setups", nargs="+", default=["Single:1:1", "Single:1:2", "Zero1:2:1"], help="STRATEGY:PROCESSES[:THREADS]"
    )
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log_every", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=4, help="structures per process and step")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "summary.json").exists():
        from sfm.data.demo import make_demo

        make_demo(data, small=True, progress=False)
    results = []
    print(f"{'model':8} {'setup':10} {'structures/s':>13} {'atoms/s':>9} {'structs/CPU-s':>14} {'peak GB/proc':>13}")
    for model in args.models:
        for setup in args.setups:
            strategy, nproc, *threads = setup.split(":")
            nproc = int(nproc)
            threads = int(threads[0]) if threads else max(1, (os.cpu_count() or 1) // nproc)
            res = run_setup(
                data, args.task, model, strategy, nproc, threads, args.steps, args.batch_size, args.log_every
            )
            results.append(res)
            print(
                f"{model:8} {setup:10} {res['structures_per_s']:13.2f} {res['atoms_per_s']:9.0f} "
                f"{res['structures_per_cpu_s']:14.3f} {res['peak_mem_gb_rank0']:13.3f}",
                flush=True,
            )
    load = os.getloadavg()
    print(f"(cores: {os.cpu_count()}, load average after the runs: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "cpu_count": os.cpu_count(), "loadavg": load}, indent=1)
        )
    return results


if __name__ == "__main__":
    main()
