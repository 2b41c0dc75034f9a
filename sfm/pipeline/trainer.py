"""The one training loop of sfm: diffusion and S2EF models both train here.

    train(model, train_set, valid_set, cfg, meta)

`model` is any nn.Module with `model.loss(batch) -> (loss, parts)` and `model.build_kwargs`
(the keyword arguments that rebuild it); datasets yield PyG Data that `sfm.data.collate` batches. Read top to
bottom: set up the strategy (Single / DDP / ZeRO, distributed.py + engine.py), the EMA and
the sharded batches, resume if asked, then per optimizer step: set the cosine lr, run
`gradient_accumulation_steps` micro-batches forward/backward, step (clipped; a non-finite
gradient skips the step on every rank), update the EMA, log, validate at each epoch end with
the EMA weights, checkpoint every `save_interval` steps and at the end.

Batch size: `train_batch_size` and `val_batch_size` are PER PROCESS (structures per forward
on one rank). One optimizer step sees
    global batch = train_batch_size * world_size * gradient_accumulation_steps
structures; the resolved config printed at start shows it. An epoch is one pass over the
training set by all ranks together (DistributedSampler shards it, padding the last batch so
every rank takes the same number of steps).
"""

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sfm.pipeline.batches import ShardedBatches
from sfm.pipeline.checkpoint import (
    latest_tag_dir,
    mark_latest,
    rng_state,
    save_consolidated,
    set_rng_state,
    step_tag,
)
from sfm.pipeline.distributed import (
    Dist,
    all_ranks_agree,
    all_reduce_sum,
    barrier,
    setup_distributed,
    teardown_distributed,
    union_of_keys,
)
from sfm.pipeline.ema import EMA
from sfm.pipeline.engine import build_engine
from sfm.pipeline.run_lock import RunLock
from sfm.pipeline.run_log import RunLog, peak_memory_gb
from sfm.pipeline.schedule import cosine_lr


@dataclass
class TrainConfig:
    """Plain training values; the command-line flags of sfm/tasks/train_args.py have these names."""

    save_dir: str = "runs/default"
    total_num_epochs: int = 1
    total_num_steps: int = 0  # > 0 overrides total_num_epochs
    warmup_num_steps: int = 100
    max_lr: float = 2e-4
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of max_lr
    weight_decay: float = 1e-3
    clip_grad_norm: float = 10.0  # 0 disables clipping
    ema_decay: float = 0.999
    max_sites: int = 0  # structures with more atoms are dropped by collate; 0 = no limit
    train_batch_size: int = 8  # per process
    val_batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    log_interval: int = 10
    save_interval: int = 1000
    keep_checkpoints: int = 2  # step directories kept; 0 keeps all
    strategy: str = "Single"
    seed: int = 1
    bf16: bool = False
    num_workers: int = 0
    resume: str | None = None  # None: fresh run; "auto": latest in save_dir (fresh if none); or a checkpoint dir
    max_nonfinite_steps: int = 20  # consecutive skipped steps that stop the run


@dataclass
class TrainState:
    """Where the run is: saved in every checkpoint, restored on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current data epoch
    batch_in_epoch: int = 0  # micro-batches of this rank already taken from the current epoch
    nonfinite_steps: int = 0  # steps skipped for non-finite loss / gradients, in total
    consecutive_nonfinite: int = 0
    empty_batches: int = 0  # micro-batches skipped because max_sites emptied them (on some rank)
    consecutive_empty: int = 0
    dropped_structures: int = 0  # training structures not trained on because of max_sites, all ranks


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps with non-finite loss or gradients."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _plain(obj):
    """JSON-safe copy (paths and other objects as strings), so checkpoints load with weights_only."""
    return json.loads(json.dumps(obj, default=str))


UNRESOLVED = object()  # train()'s resume_dir when the caller has not resolved it


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """Checkpoint directory to resume from, None for a fresh run; refuses to overwrite a run."""
    ckpt_root = Path(cfg.save_dir) / "checkpoints"
    if cfg.resume is None:
        if latest_tag_dir(ckpt_root) is not None:
            raise FileExistsError(
                f"{cfg.save_dir} already holds a run (checkpoints/latest): pass --resume to continue it, "
                "or choose another --save_dir"
            )
        return None
    if cfg.resume == "auto":
        return latest_tag_dir(ckpt_root)
    path = Path(cfg.resume)
    if path.is_file():
        path = path.parent
    if (path / "latest").exists():
        path = latest_tag_dir(path)
    elif (path / "checkpoints" / "latest").exists():
        path = latest_tag_dir(path / "checkpoints")
    if not (path / "trainer.pt").exists():
        raise FileNotFoundError(f"--resume {cfg.resume}: no checkpoint there (expected {path / 'trainer.pt'})")
    return path


def check_model(model) -> None:
    for attr in ("loss", "build_kwargs"):
        if not hasattr(model, attr):
            raise TypeError(
                f"{type(model).__name__} has no .{attr}: the trainer needs model.loss(batch) and model.build_kwargs"
            )


def train(
    model, train_set, valid_set, cfg: TrainConfig, meta: dict | None = None, collate_fn=None, resume_dir=UNRESOLVED
) -> dict:
    """Train `model` on `train_set` (validate on `valid_set`, may be None) as `cfg` says.

    meta: entries for the consolidated checkpoint (task, dictionary, args, ...).
    collate_fn: list of Data -> Batch; default sfm.data.collate with cfg.max_sites.
    resume_dir: what `resolve_resume(cfg)` returned, for a caller that needed it first (to know
    whether the run is fresh); left out, it is resolved here.
    Returns a summary: step, last train / valid metrics, nonfinite_steps, checkpoint path.
    Runs in the calling process; multi-process runs call it on every rank (torchrun).
    """
    check_model(model)
    if collate_fn is None:
        from sfm.data import collate

        collate_fn = partial(collate, max_sites=cfg.max_sites or None)
    dist = setup_distributed(cfg.strategy)
    try:
        # rank 0 holds save_dir for the run's lifetime (run_lock.py): a second run on it is refused
        with RunLock(cfg.save_dir) if dist.is_main else contextlib.nullcontext():
            resume_dir = resolve_resume(cfg) if resume_dir is UNRESOLVED else resume_dir
            return _train(model, train_set, valid_set, cfg, dict(meta or {}), collate_fn, dist, resume_dir)
    finally:
        teardown_distributed()


@dataclass
class _Run:
    """What stays fixed during one training run: the strategy's engine, the EMA, the data."""

    cfg: TrainConfig
    dist: Dist
    engine: object
    ema: EMA
    ema_sharded: bool  # ZeRO-3: each rank holds (and saves) the EMA of its own partition
    train_batches: ShardedBatches
    valid_batches: ShardedBatches | None
    total_steps: int
    meta: dict  # for the consolidated checkpoint; "config" added by _write_config

    @property
    def save_dir(self) -> Path:
        return Path(self.cfg.save_dir)

    @property
    def ckpt_root(self) -> Path:
        return self.save_dir / "checkpoints"


def _train(model, train_set, valid_set, cfg, meta, collate_fn, dist: Dist, resume_dir):
    run = _setup(model, train_set, valid_set, cfg, meta, collate_fn, dist)
    state = _resume(run, resume_dir) if resume_dir is not None else TrainState()
    _write_config(run, model, state, resume_dir)
    log = RunLog(run.save_dir, dist.is_main, run.total_steps, state.step)
    tally, last_train, last_valid, last_ckpt = Tally(), {}, {}, latest_tag_dir(run.ckpt_root)
    data = iter(run.train_batches.epoch(state.epoch, start=state.batch_in_epoch))
    run.engine.net.train()
    while state.step < run.total_steps:  # one iteration per optimizer step
        step_start, step_cpu = time.time(), time.process_time()
        lr = cosine_lr(state.step, cfg.max_lr, cfg.warmup_num_steps, run.total_steps, cfg.min_lr_ratio)
        run.engine.set_lr(lr)
        data, epoch_done = _accumulate_gradients(run, state, data, tally)
        grad_norm, applied = run.engine.step()
        _account_step(run, state, applied, log, last_ckpt)
        state.step += 1
        log.advance()
        tally.seconds += time.time() - step_start
        tally.cpu_seconds += time.process_time() - step_cpu
        tally.grad_norm, tally.lr = grad_norm, lr

        if state.step % cfg.log_interval == 0 or state.step == run.total_steps:
            last_train = tally.reduce(dist)
            state.dropped_structures += last_train["dropped_structures"]
            last_train.update(
                epoch=state.epoch, nonfinite_steps=state.nonfinite_steps, peak_mem_gb=peak_memory_gb(dist.device)
            )
            log.write("train", state.step, last_train)
            tally = Tally()
        if run.valid_batches is not None and (epoch_done or state.step == run.total_steps):
            last_valid = validate(run.engine, run.ema, run.valid_batches, cfg, dist)
            log.write("valid", state.step, last_valid)
        # No checkpoint in a run of skipped steps: the last one written stays the last good one.
        if (state.step % cfg.save_interval == 0 and applied) or state.step == run.total_steps:
            last_ckpt = save_checkpoint(run, state, model.build_kwargs)
    return _finish(run, state, log, last_ckpt, last_train, last_valid)


def _setup(model, train_set, valid_set, cfg: TrainConfig, meta: dict, collate_fn, dist: Dist) -> _Run:
    """The model, optimizer and EMA under the strategy, and the sharded batches."""
    if dist.is_main:
        (Path(cfg.save_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
    engine = build_engine(model, cfg, dist)
    ema = EMA(engine.local_params(), cfg.ema_decay)
    seed_everything(cfg.seed + dist.rank)  # each rank its own noise stream
    train_batches = ShardedBatches(train_set, cfg.train_batch_size, collate_fn, dist, cfg.seed, True, cfg.num_workers)
    valid_batches = None
    if valid_set is not None:
        valid_batches = ShardedBatches(
            valid_set, cfg.val_batch_size, collate_fn, dist, cfg.seed, False, cfg.num_workers
        )
    steps_per_epoch = math.ceil(len(train_batches) / cfg.gradient_accumulation_steps)
    total_steps = cfg.total_num_steps if cfg.total_num_steps > 0 else cfg.total_num_epochs * steps_per_epoch
    return _Run(cfg, dist, engine, ema, dist.zero_stage == 3, train_batches, valid_batches, total_steps, meta)


def _resume(run: _Run, resume_dir: Path) -> TrainState:
    """Weights, optimizer, EMA, RNG streams and the place in the data, exactly as saved."""
    cfg, dist = run.cfg, run.dist
    trainer_state = torch.load(resume_dir / "trainer.pt", map_location="cpu", weights_only=False)
    if (trainer_state["strategy"], trainer_state["world_size"]) != (cfg.strategy, dist.world_size):
        raise ValueError(
            f"checkpoint {resume_dir} was written by {trainer_state['strategy']} on {trainer_state['world_size']} "
            f"processes; exact resume needs the same (this run: {cfg.strategy} on {dist.world_size})"
        )
    run.engine.load(resume_dir)
    rank_state = torch.load(resume_dir / f"rank_{dist.rank:05d}.pt", map_location="cpu", weights_only=False)
    run.ema.load_state_dict(rank_state["ema"] if run.ema_sharded else trainer_state["ema"])
    set_rng_state(rank_state["rng"])
    return TrainState(**trainer_state["state"])


def _write_config(run: _Run, model, state: TrainState, resume_dir: Path | None) -> None:
    """The resolved configuration: printed at start, written to config.json, kept in checkpoints."""
    cfg, dist = run.cfg, run.dist
    params = model.parameters()
    resolved = {
        **asdict(cfg),
        "world_size": dist.world_size,
        "device": str(dist.device),
        "global_batch_size": cfg.train_batch_size * dist.world_size * cfg.gradient_accumulation_steps,
        "batches_per_epoch_per_rank": len(run.train_batches),
        "steps_per_epoch": math.ceil(len(run.train_batches) / cfg.gradient_accumulation_steps),
        "total_steps": run.total_steps,
        "parameters": sum(p.ds_numel for p in params) if run.ema_sharded else sum(p.numel() for p in params),
        "resumed_from": str(resume_dir) if resume_dir else None,
        "resumed_at_step": state.step,
    }
    run.meta = {**run.meta, "config": _plain(resolved), "args": _plain(run.meta.get("args", asdict(cfg)))}
    if dist.is_main:
        print("[sfm] resolved training config:\n" + json.dumps(resolved, indent=2), flush=True)
        (run.save_dir / "config.json").write_text(json.dumps(run.meta["config"], indent=2) + "\n")


def _accumulate_gradients(run: _Run, state: TrainState, data, tally: "Tally"):
    """Forward and backward ``gradient_accumulation_steps`` micro-batches (all ranks skip a
    micro-batch that max_sites emptied on any rank). Returns the data iterator (a new one when
    the epoch ended) and whether it did."""
    accum, epoch_done, micro = run.cfg.gradient_accumulation_steps, False, 0
    while micro < accum:
        batch = next(data)
        size = run.train_batches.batch_len(state.batch_in_epoch)
        state.batch_in_epoch += 1
        if state.batch_in_epoch == len(run.train_batches):
            state.epoch, state.batch_in_epoch, epoch_done = state.epoch + 1, 0, True
            data = iter(run.train_batches.epoch(state.epoch))
        if run.cfg.max_sites and not all_ranks_agree(batch is not None and batch.num_graphs > 0, run.dist):
            state.empty_batches += 1
            state.consecutive_empty += 1
            tally.dropped += size  # none of this rank's batch is trained on
            if state.consecutive_empty >= len(run.train_batches):  # a whole epoch read without a step
                raise ValueError(
                    f"--max_sites {run.cfg.max_sites} drops every training structure "
                    f"({state.consecutive_empty} batches in a row, a whole epoch, were empty); "
                    "raise it (0: no limit)"
                )
            continue
        state.consecutive_empty = 0
        tally.dropped += getattr(batch, "num_dropped", 0)
        batch = batch.to(run.dist.device)
        loss, parts = run.engine.loss(batch, sync=micro == accum - 1)
        run.engine.backward(loss)
        tally.add(loss, parts, batch)
        micro += 1
    return data, epoch_done


def _account_step(run: _Run, state: TrainState, applied: bool, log: RunLog, last_ckpt) -> None:
    """EMA update after an applied step; count a skipped (non-finite) one, and stop after
    ``max_nonfinite_steps`` in a row."""
    if applied:
        run.ema.update(run.engine.local_params())
        state.consecutive_nonfinite = 0
        return
    state.nonfinite_steps += 1
    state.consecutive_nonfinite += 1
    log.echo(
        f"[sfm] step {state.step + 1}: non-finite loss or gradients, step skipped ({state.nonfinite_steps} so far)"
    )
    if state.consecutive_nonfinite >= run.cfg.max_nonfinite_steps:
        where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        raise NonFiniteTraining(
            f"{state.consecutive_nonfinite} consecutive steps had a non-finite loss or gradients "
            f"(at step {state.step + 1}, --max_nonfinite_steps {run.cfg.max_nonfinite_steps}); stopping. "
            f"{where}. Check the data for NaN/inf labels, lower --max_lr, or run without --bf16."
        )


def save_checkpoint(run: _Run, state: TrainState, build_kwargs: dict) -> Path:
    """Write checkpoints/step_N: the engine's shards, each rank's RNG (and sharded EMA),
    trainer.pt (state, EMA, strategy) and a consolidated model.pt with the EMA weights."""
    cfg, dist, ema = run.cfg, run.dist, run.ema
    tag_dir = run.ckpt_root / step_tag(state.step)
    tag_dir.mkdir(parents=True, exist_ok=True)  # every rank: save_dir should be shared, but need not be
    barrier(dist)
    run.engine.save(tag_dir)
    torch.save(
        {"rng": rng_state(), "ema": ema.state_dict() if run.ema_sharded else None}, tag_dir / f"rank_{dist.rank:05d}.pt"
    )
    if dist.is_main:
        torch.save(
            {
                "state": asdict(state),
                "ema": None if run.ema_sharded else ema.state_dict(),
                "strategy": cfg.strategy,
                "world_size": dist.world_size,
                "config": run.meta["config"],
            },
            tag_dir / "trainer.pt",
        )
    with run.engine.ema_weights(ema), run.engine.full_state_dict() as state_dict:
        if dist.is_main:
            save_consolidated(
                tag_dir / "model.pt",
                state_dict=state_dict,
                build_kwargs=build_kwargs,
                meta={**run.meta, "step": state.step, "epoch": state.epoch},
            )
    barrier(dist)
    if dist.is_main:
        mark_latest(run.ckpt_root, tag_dir.name, cfg.keep_checkpoints)
    return tag_dir


def _finish(run: _Run, state: TrainState, log: RunLog, last_ckpt, last_train: dict, last_valid: dict) -> dict:
    """Copy the last consolidated checkpoint to save_dir/model.pt; the run's summary."""
    if run.cfg.max_sites:
        log.echo(
            f"[sfm] --max_sites {run.cfg.max_sites}: {state.dropped_structures} training structures were not "
            f"trained on ({state.empty_batches} micro-batches empty); validation dropped "
            f"{last_valid.get('dropped_structures', 0)} in its last pass"
        )
    final = None
    if run.dist.is_main and last_ckpt is not None:
        final = run.save_dir / "model.pt"
        shutil.copyfile(Path(last_ckpt) / "model.pt", final)
        log.echo(f"[sfm] done at step {state.step}: consolidated checkpoint {final}")
    log.close()
    return {
        "step": state.step,
        "train": last_train,
        "valid": last_valid,
        "nonfinite_steps": state.nonfinite_steps,
        "empty_batches": state.empty_batches,
        "dropped_structures": state.dropped_structures,
        "checkpoint": str(final) if final else None,
    }


class Tally:
    """Sums of losses, parts, structures and atoms since the last log (finite losses only).

    Sums stay tensors on the device until `reduce`, so a step costs no host sync for logging.
    `seconds` counts the training steps only (data loading included; validation and
    checkpointing excluded), so structures/s is the training throughput. `cpu_seconds` is
    this process's CPU time in those steps: structures per CPU-second of all ranks together
    is the cost measure that holds on a machine shared with other work.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.structures = 0
        self.atoms = 0
        self.dropped = 0  # structures max_sites kept out of training
        self.nonfinite = 0.0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.grad_norm = math.nan
        self.lr = math.nan

    def add(self, loss, parts, batch) -> None:
        self.structures += batch.num_graphs
        self.atoms += batch.num_nodes
        finite = torch.isfinite(loss.detach())
        for key, value in {"loss": loss, **parts}.items():
            value = value.detach().double()
            self.sums[key] = self.sums.get(key, 0.0) + torch.where(finite, value, 0.0)
            self.counts[key] = self.counts.get(key, 0.0) + finite.double()
        self.nonfinite = self.nonfinite + (~finite).double()

    def reduce(self, dist: Dist) -> dict:
        """Means over all ranks' micro-batches; structures/s and atoms/s of all ranks together."""
        keys = union_of_keys(list(self.sums), dist)
        zero = torch.zeros((), dtype=torch.float64, device=dist.device)
        vec = torch.stack(
            [self.sums.get(k, zero) for k in keys]
            + [self.counts.get(k, zero) for k in keys]
            + [
                zero + self.structures,
                zero + self.atoms,
                zero + self.nonfinite,
                zero + self.cpu_seconds,
                zero + self.dropped,
            ]
        )
        vec = all_reduce_sum(vec, dist).tolist()
        n = len(keys)
        elapsed = max(self.seconds, 1e-9)
        out = {k: vec[i] / vec[n + i] if vec[n + i] else math.nan for i, k in enumerate(keys)}
        if "loss" not in out:
            out["loss"] = math.nan
        out.update(
            lr=self.lr,
            grad_norm=self.grad_norm,
            structures_per_s=vec[2 * n] / elapsed,
            atoms_per_s=vec[2 * n + 1] / elapsed,
            nonfinite_losses=int(vec[2 * n + 2]),
            structures_per_cpu_s=vec[2 * n] / max(vec[2 * n + 3], 1e-9),
            dropped_structures=int(vec[2 * n + 4]),
        )
        return out


def validate(engine, ema, batches: ShardedBatches, cfg: TrainConfig, dist: Dist) -> dict:
    """Mean validation loss and parts (weighted by structures) with the EMA weights, over all ranks.

    The noise of stochastic losses (diffusion time and noise) is drawn from a fixed seed, so
    numbers of different epochs compare, and the training RNG stream is left as it was.
    """
    engine.net.eval()
    sums: dict[str, float] = {}
    structures = 0.0
    nonfinite = 0
    dropped = 0
    devices = [dist.device.index] if dist.device.type == "cuda" else []
    with engine.ema_weights(ema), torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(cfg.seed + dist.rank)
        for k, batch in enumerate(batches.epoch(0)):
            if cfg.max_sites and not all_ranks_agree(batch is not None and batch.num_graphs > 0, dist):
                dropped += batches.batch_len(k)
                continue
            dropped += getattr(batch, "num_dropped", 0)
            batch = batch.to(dist.device)
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, parts = engine.net(batch)
            if not torch.isfinite(loss):
                nonfinite += 1
                continue
            n = batch.num_graphs
            structures += n
            for key, value in {"loss": loss, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
    engine.net.train()
    keys = union_of_keys(list(sums), dist)
    vec = torch.tensor(
        [sums.get(k, 0.0) for k in keys] + [structures, nonfinite, dropped], dtype=torch.float64, device=dist.device
    )
    vec = all_reduce_sum(vec, dist).tolist()
    n = len(keys)
    out = {k: vec[i] / vec[n] if vec[n] else math.nan for i, k in enumerate(keys)}
    out.update(structures=int(vec[n]), nonfinite_batches=int(vec[n + 1]), dropped_structures=int(vec[n + 2]))
    return out
