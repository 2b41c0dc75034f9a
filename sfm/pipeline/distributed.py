"""Process-group setup for the training strategies, and the small collectives the trainer uses.

Strategies: "Single" (one process, no process group), "DDP" (torch DistributedDataParallel),
"Zero1" / "Zero2" / "Zero3" (DeepSpeed ZeRO stages). Multi-process runs are launched by
torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. A DDP / ZeRO run
started with plain `python` gets a one-process group on localhost (otherwise DeepSpeed would
go looking for MPI). Backend: nccl on GPU, gloo on CPU.
"""

import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist

STRATEGIES = ("Single", "DDP", "Zero1", "Zero2", "Zero3")


@dataclass
class Dist:
    """Where this process sits: rank among world_size processes, its device."""

    strategy: str
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def zero_stage(self) -> int:
        """ZeRO stage (1, 2, 3), 0 for Single / DDP."""
        return int(self.strategy[-1]) if self.strategy.startswith("Zero") else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(strategy: str) -> Dist:
    """Initialise the process group for `strategy` (none for Single) and pick this rank's device."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker
        exit_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "Single":
        if world_size > 1:
            raise ValueError(
                f"--strategy Single runs one process, but WORLD_SIZE={world_size} (launched by torchrun with "
                "several processes): use --strategy DDP or Zero1/Zero2/Zero3"
            )
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return Dist(strategy, 0, 1, 0, device)

    if "RANK" not in os.environ:
        # Plain `python`: a one-process group on localhost.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not tdist.is_initialized():
        if strategy == "DDP":
            tdist.init_process_group(backend)
        else:
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend)
    return Dist(strategy, tdist.get_rank(), tdist.get_world_size(), local_rank, device)


def exit_with_launcher() -> None:
    """Linux: this worker gets SIGTERM when its parent (the torchrun launcher) dies, so that killing
    only the launcher (kill -9 included) ends the run instead of leaving its workers running."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):  # prctl is Linux's; elsewhere workers outlive a killed launcher
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1  # linux/prctl.h
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def teardown_distributed() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum of `x` over ranks (x itself when there is one process)."""
    if dist.world_size > 1:
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x


def all_ranks_agree(flag: bool, dist: Dist) -> bool:
    """True only if `flag` is True on every rank (one tiny all-reduce)."""
    if dist.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def union_of_keys(keys: list[str], dist: Dist) -> list[str]:
    """Sorted union of string keys over ranks (loss parts can differ between batches)."""
    if dist.world_size == 1:
        return sorted(keys)
    gathered = [None] * dist.world_size
    tdist.all_gather_object(gathered, sorted(keys))
    return sorted(set().union(*gathered))


def barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        tdist.barrier()
