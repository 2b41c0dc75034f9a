"""Training logs, written by rank 0 only: progress bar, JSONL metrics, TensorBoard.

Every record goes to `save_dir/metrics.jsonl` (one JSON object a line, with "split" =
"train" | "valid" and "step") and to TensorBoard under `save_dir/tb` as `{split}/{key}`.
The progress bar (a terminal) shows loss, structures/s and lr; when stderr is not a terminal
(cluster logs) each train record is printed as one plain line instead.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


class RunLog:
    """`initial_step` > 0 (a resumed run): records of later steps, written by the run before it
    was stopped and about to be redone, are dropped from metrics.jsonl."""

    def __init__(self, save_dir, enabled: bool, total_steps: int, initial_step: int):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        save_dir = Path(save_dir)
        path = save_dir / "metrics.jsonl"
        if path.exists():
            kept = [
                line for line in path.read_text().splitlines(keepends=True) if json.loads(line)["step"] <= initial_step
            ]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)
        self.jsonl = open(path, "a")
        self.tb = SummaryWriter(str(save_dir / "tb"))
        self.bar = (
            tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)
            if sys.stderr.isatty()
            else None
        )
        self.start = time.time()

    def write(self, split: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "time": round(time.time() - self.start, 3), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(f"{split}/{key}", value, step)
        if split == "train" and self.bar is not None:
            self.bar.set_postfix(
                loss=f"{values['loss']:.4g}", structs_s=f"{values['structures_per_s']:.1f}", lr=f"{values['lr']:.2e}"
            )
        else:
            shown = " ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            self.echo(f"[{split}] step {step} {shown}")

    def advance(self, n: int = 1) -> None:
        if self.enabled and self.bar is not None:
            self.bar.update(n)

    def echo(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        self.jsonl.close()
