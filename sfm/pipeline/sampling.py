"""Sampling runs: generate structures from a diffusion checkpoint, sharded over ranks, streamed to disk.

    run_sampling(GenConfig(...)) -> stats dict          (also what sfm/tasks/gen.py calls)

Work. The inputs (an LMDB split or compositions, ``sample_inputs.py``) times
``num_samples`` make the items ``(input i, sample s)``, ordered sample-major (every
input's sample 0, then every input's sample 1, ...), cut into batches of ``batch_size``
items; batch ``b`` goes to rank ``b % world_size``. Each batch draws all its randomness
from its own generator, seeded from ``(seed, first item, batch length)``. So the samples
depend on the seed, the inputs and ``batch_size`` only: not on the number of ranks, and
not on where an earlier run of the same command stopped. (Not on ``num_samples`` either
for the items of the first samples, up to the batch that straddles them.) A sample is
identified by ``(sid, sample_idx)``; a rerun skips those already written. Inputs that share a
sid (several placements of one system, as a dense split stores them) number their samples on:
the j-th input of a sid writes ``sample_idx = j * num_samples + s`` (:func:`sample_indices`),
so one sid's samples follow the input order.

Samplers. ``pc`` (reference, predictor-corrector) and ``ode`` (few-step Heun) are the
model's (``sfm.models.diffusion.samplers``); the baselines ``baseline_initial`` and
``baseline_random`` (``sfm.models.diffusion.baselines``; the random csp lattices drawn from
``lattice_data``, else from the checkpoint's lattice prior) go through the same writer, so
the same metrics evaluate them.

With ``t_start < 1`` the model samplers refine instead of generate (SDEdit, see
``samplers.sample``): the generated atoms start from the input's ``pos`` noised to level
``t_start`` (in inpaint: from the initial placement, so the adsorption site is kept);
``renoise=False`` takes the input itself as the noisy state at ``t_start`` (no noise added).

Given atoms (``inpaint``: tags in ``given_tags``) sit at the input's ``pos`` (or
``pos_relaxed`` with ``given_positions="pos_relaxed"``) and are written bit for bit as
given, as is a given lattice.

Output: ``save_dir/run.json`` (the settings that define the samples; a rerun with other
settings in the same ``save_dir`` is refused), ``save_dir/samples/`` (``sample_store.py``) and
``save_dir/run.lock`` (held by rank 0 while sampling: a second run on the folder is refused).
Each sample entry holds ``pos``, ``cell [1,3,3]``, ``atomic_numbers``, ``natoms``, ``tags``,
``fixed``, ``sid``, ``sample_idx``, ``input_index``, ``generated [n]`` (bool: this atom was
generated), ``mode``, ``sampler``, ``steps``, ``t_start``, ``nfe`` (network calls of its
trajectory), ``seed``, and ``formula`` for composition inputs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from sfm.data import Dictionary, collate, open_dataset
from sfm.data.lattice import as_cell
from sfm.data.structure import SLAB_TAGS, fixed_mask, tag_mask
from sfm.models.diffusion.baselines import BASELINES, sample_baseline
from sfm.models.diffusion.masks import MODES
from sfm.models.diffusion.samplers import DEFAULT_STEPS, check_options, sample
from sfm.models.diffusion.samplers import SAMPLERS as MODEL_SAMPLERS
from sfm.pipeline.distributed import all_reduce_sum, barrier, setup_distributed, teardown_distributed
from sfm.pipeline.run_lock import RunLock
from sfm.pipeline.sample_inputs import CompositionInputs, LmdbInputs, parse_compositions
from sfm.pipeline.sample_store import SampleStore, done_keys, sample_key

SAMPLERS = MODEL_SAMPLERS + BASELINES
# settings that define the samples: a rerun into the same save_dir must keep them
_DEFINING = (
    "checkpoint",
    "data_path",
    "compositions",
    "num_atoms",
    "formula_units",
    "mode",
    "given_tags",
    "given_positions",
    "sampler",
    "steps",
    "corrector",
    "t_start",
    "renoise",
    "churn",
    "batch_size",
    "seed",
    "lattice_data",
)


@dataclass
class GenConfig:
    """Plain values of a sampling run; the flags of ``sfm/tasks/gen.py`` have these names."""

    save_dir: str
    checkpoint: str | None = None
    data_path: str | None = None
    compositions: str | None = None
    num_atoms: int | None = None
    formula_units: int | None = None
    mode: str = "csp"
    given_tags: tuple[int, ...] = SLAB_TAGS
    given_positions: str = "pos"
    num_samples: int = 1
    sampler: str = "ode"
    steps: int | None = None  # None: the sampler's default (pc 1000, ode 25)
    corrector: float = 0.4
    t_start: float = 1.0  # < 1: refine the input structure from this noise level (SDEdit), model samplers only
    renoise: bool = True  # t_start < 1: noise the input to t_start first (False: take it as the noisy state)
    churn: float = 0.0  # ode: noise added before each step (EDM stochastic Heun), 0: deterministic
    batch_size: int = 16
    seed: int = 0
    max_inputs: int | None = None
    lattice_data: str | None = None
    device: str | None = None  # None: cuda (LOCAL_RANK) if available, else cpu
    progress: bool = True
    fail_after_batches: int | None = field(default=None, repr=False)  # tests: raise after this many batches

    def __post_init__(self):
        self.given_tags = tuple(int(t) for t in self.given_tags)
        if self.steps is None and self.sampler in MODEL_SAMPLERS:
            self.steps = DEFAULT_STEPS[self.sampler]
        if self.sampler in BASELINES:
            self.steps = 0

    def defining(self) -> dict:
        """The settings recorded in ``run.json`` (paths resolved)."""
        out = {k: getattr(self, k) for k in _DEFINING}
        for k in ("checkpoint", "data_path", "lattice_data"):
            out[k] = str(Path(out[k]).resolve()) if out[k] else None
        out["given_tags"] = list(out["given_tags"])
        return out


def check_config(cfg: GenConfig) -> None:
    """Raise ``ValueError`` / ``FileNotFoundError`` naming the problem with the settings (before any work)."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {cfg.sampler!r}")
    if (cfg.data_path is None) == (cfg.compositions is None):
        raise ValueError("give exactly one input: data_path (an LMDB split) or compositions")
    if cfg.compositions is not None and cfg.mode != "csp":
        raise ValueError(
            f"mode {cfg.mode!r} takes the lattice (and given atoms) from each input's cell and pos; "
            "compositions carry no cell: use mode csp, or data_path with an LMDB"
        )
    if cfg.compositions is not None and cfg.sampler == "baseline_initial":
        raise ValueError("baseline_initial copies each input's pos and cell; compositions have neither")
    if (cfg.num_atoms is not None or cfg.formula_units is not None) and cfg.compositions is None:
        raise ValueError("num_atoms / formula_units apply to compositions only")
    if cfg.num_atoms is not None and cfg.formula_units is not None:
        raise ValueError("give num_atoms or formula_units, not both")
    for name in ("num_samples", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    check_options(
        cfg.sampler, cfg.steps if cfg.sampler in MODEL_SAMPLERS else None, cfg.t_start, cfg.renoise, cfg.churn
    )
    if cfg.max_inputs is not None and cfg.max_inputs < 1:
        raise ValueError(f"max_inputs must be >= 1, got {cfg.max_inputs}")
    if cfg.t_start < 1.0 and (cfg.sampler not in MODEL_SAMPLERS or cfg.compositions is not None):
        raise ValueError(
            "t_start < 1 refines each input's pos and cell with a model sampler (pc, ode): "
            "it needs data_path and sampler pc or ode"
        )
    if cfg.given_positions not in ("pos", "pos_relaxed"):
        raise ValueError(f"given_positions must be 'pos' or 'pos_relaxed', got {cfg.given_positions!r}")
    if needs_model(cfg) and cfg.checkpoint is None:
        raise ValueError(
            f"sampler {cfg.sampler} needs a checkpoint"
            + (" (or lattice_data for the csp lattices)" if cfg.sampler == "baseline_random" else "")
        )
    for name in ("checkpoint", "data_path", "lattice_data"):
        path = getattr(cfg, name)
        if path is not None and not glob.glob(str(path)):  # data paths may be globs of files
            raise FileNotFoundError(f"{name} {path}: no such file or directory")


def needs_model(cfg: GenConfig) -> bool:
    """The model samplers, and the csp random baseline without lattice_data (it uses the prior)."""
    return cfg.sampler in MODEL_SAMPLERS or (
        cfg.sampler == "baseline_random" and cfg.mode == "csp" and cfg.lattice_data is None
    )


def load_model(path: str, device: torch.device):
    """The diffusion model of a consolidated checkpoint, in eval mode on ``device``."""
    from sfm import load_checkpoint

    model = load_checkpoint(path)
    if not hasattr(model, "lattice_process") or model.checkpoint.get("task", "diffusion") != "diffusion":
        raise ValueError(
            f"{path} holds a {model.checkpoint.get('task', type(model).__name__)} model, not a diffusion model"
        )
    return model.to(device).eval()


def load_inputs(cfg: GenConfig, dictionary: Dictionary | None):
    if cfg.data_path is not None:
        return LmdbInputs(cfg.data_path, cfg.max_inputs, dictionary)
    return CompositionInputs(
        parse_compositions(cfg.compositions), cfg.num_atoms, cfg.formula_units, cfg.max_inputs, dictionary
    )


def plan_batches(num_inputs: int, num_samples: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """All batches of ``(input, sample)`` items, sample-major (module doc)."""
    items = [(i, s) for s in range(num_samples) for i in range(num_inputs)]
    return [items[k : k + batch_size] for k in range(0, len(items), batch_size)]


def batch_generator(seed: int, items: list[tuple[int, int]], device) -> torch.Generator:
    """The generator of one batch, seeded from ``(seed, first item, length)``."""
    state = np.random.SeedSequence([seed, items[0][0], items[0][1], len(items)]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def given_mask(data: Data, cfg: GenConfig) -> torch.Tensor:
    """``[n]`` bool: atoms given in ``cfg.mode`` (inpaint: tags in ``given_tags``)."""
    if cfg.mode != "inpaint":
        return torch.zeros(int(data.natoms), dtype=torch.bool)
    return tag_mask(data.tags, cfg.given_tags)


def make_batch(inputs: list[Data], cfg: GenConfig) -> Batch:
    """Batch of inputs with ``given`` ``[N]`` bool; given atoms moved to ``pos_relaxed`` if asked."""
    items = []
    for data in inputs:
        data = data.clone()
        data.given = given_mask(data, cfg)
        if cfg.given_positions == "pos_relaxed" and cfg.mode == "inpaint":
            if "pos_relaxed" not in data:
                raise ValueError(f"sid {data.sid}: given_positions=pos_relaxed but the entry has no pos_relaxed")
            data.pos = torch.where(data.given[:, None], data.pos_relaxed, data.pos)
        items.append(data)
    if "cell" in items[0]:
        return collate(items)
    return Batch.from_data_list(items)


class CallCounter:
    """Counts forward calls of a module (network calls of the samplers)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1


def generate(batch: Batch, cfg: GenConfig, model, generator, pool=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos [N, 3], cell [B, 3, 3])`` of one batch with ``cfg.sampler``."""
    if cfg.sampler in MODEL_SAMPLERS:
        out = sample(
            model,
            batch,
            cfg.mode,
            cfg.sampler,
            cfg.steps,
            generator=generator,
            atom_given=batch.given if cfg.mode == "inpaint" else None,
            corrector=cfg.corrector,
            t_start=cfg.t_start,
            renoise=cfg.renoise,
            churn=cfg.churn,
        )
        return out.pos, out.cell
    return sample_baseline(
        batch, cfg.sampler, cfg.mode, generator, model, pool, atom_given=batch.given if cfg.mode == "inpaint" else None
    )


def sample_indices(sids: list, num_samples: int) -> list[int]:
    """Per input, the ``sample_idx`` of its sample 0: ``num_samples`` times the number of
    earlier inputs with the same sid (0 for every input when the sids are distinct)."""
    seen: dict = {}
    out = []
    for sid in sids:
        out.append(seen.get(sid, 0) * num_samples)
        seen[sid] = seen.get(sid, 0) + 1
    return out


def records_of(
    batch: Batch, inputs: list[Data], items, pos, cell, cfg: GenConfig, nfe: int, first: list[int]
) -> list[Data]:
    """One sample entry (module doc) per structure of the batch; ``first``: per input index,
    the ``sample_idx`` of its sample 0 (:func:`sample_indices`)."""
    pos, cell = pos.detach().float().cpu(), cell.detach().float().cpu()
    ptr = batch.ptr.tolist()
    out = []
    for g, (data, (i, s)) in enumerate(zip(inputs, items)):
        sl = slice(ptr[g], ptr[g + 1])
        record = Data(
            pos=pos[sl].clone(),
            cell=cell[g][None].clone(),
            atomic_numbers=data.atomic_numbers.long(),
            natoms=int(data.natoms),
            tags=data.tags.long(),
            fixed=fixed_mask(data),
            sid=data.sid,
            sample_idx=first[i] + s,
            input_index=i,
            generated=~batch.given[sl].cpu(),
            mode=cfg.mode,
            sampler=cfg.sampler,
            steps=int(cfg.steps),
            nfe=int(nfe),
            seed=int(cfg.seed),
            t_start=float(cfg.t_start),
        )
        if "formula" in data:
            record.formula = data.formula
        out.append(record)
    return out


def check_run_file(cfg: GenConfig, has_samples: bool) -> Path:
    """``save_dir/run.json``; raise if it records other defining settings than ``cfg``'s and
    ``save_dir`` holds samples (a run that failed before its first sample blocks nothing)."""
    path = Path(cfg.save_dir) / "run.json"
    if path.exists() and has_samples:
        before = json.loads(path.read_text())
        now = json.loads(json.dumps(cfg.defining()))
        diff = {k: (before.get(k), now[k]) for k in now if before.get(k) != now[k]}
        if diff:
            lines = ", ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{cfg.save_dir} holds samples made with other settings ({lines}); "
                "rerun with the same settings to resume, or use another save_dir"
            )
    return path


def _device(cfg: GenConfig, local_rank: int) -> torch.device:
    if cfg.device is not None:
        return torch.device(cfg.device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def run_sampling(cfg: GenConfig) -> dict:
    """Generate the samples this rank owns (module doc); returns the run's stats (summed over ranks).

    Launched by torchrun (``WORLD_SIZE`` > 1) it joins a process group and every rank
    returns the same stats; the group is left initialised for the caller's final barrier
    (:func:`finish`).
    """
    check_config(cfg)
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dist = setup_distributed("DDP" if multi else "Single")
    # rank 0 holds save_dir while sampling (run_lock.py): two runs appending to the same files would mix
    with RunLock(cfg.save_dir) if dist.is_main else contextlib.nullcontext():
        return _sample(cfg, dist)


def _sample(cfg: GenConfig, dist) -> dict:
    device = _device(cfg, dist.local_rank)
    model = load_model(cfg.checkpoint, device) if needs_model(cfg) else None
    placement_t = getattr(model, "placement_t", None) if getattr(model, "placement_prob", 0) > 0 else None
    if dist.is_main and placement_t is not None and not cfg.renoise and abs(cfg.t_start - placement_t) > 1e-6:
        print(
            f"warning: this checkpoint was trained to denoise placements at t = {placement_t}; "
            f"--t_start {cfg.t_start} --no_renoise treats them as noisier/cleaner than that",
            file=sys.stderr,
        )
    dictionary = (
        Dictionary(model.checkpoint["dictionary"], source=str(cfg.checkpoint))
        if model is not None and model.checkpoint.get("dictionary")
        else None
    )
    inputs = load_inputs(cfg, dictionary)
    pool = None
    if cfg.sampler == "baseline_random" and cfg.mode == "csp" and cfg.lattice_data is not None:
        ref = open_dataset(cfg.lattice_data)
        pool = torch.stack([as_cell(ref[i].cell) for i in range(len(ref))])
    counter = CallCounter(model) if model is not None else None

    done = done_keys(cfg.save_dir)
    run_file = check_run_file(cfg, has_samples=bool(done))
    barrier(dist)  # every rank has read the finished samples and run.json before any rank writes
    if dist.is_main:
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(cfg.defining(), indent=1) + "\n")
    first = sample_indices([inputs.sid(i) for i in range(len(inputs))], cfg.num_samples)
    batches = plan_batches(len(inputs), cfg.num_samples, cfg.batch_size)[dist.rank :: dist.world_size]
    todo = []
    for items in batches:
        missing = [not done or (inputs.sid(i), first[i] + s) not in done for i, s in items]
        if any(missing):
            todo.append((items, missing))
    total = sum(sum(m) for _, m in todo)

    stats = {"written": 0, "network_calls": 0, "nfe_samples": 0}
    bar = _progress(total, cfg, dist.is_main)
    start = time.perf_counter()
    with SampleStore(cfg.save_dir, dist.rank) as store:
        for n_batch, (items, missing) in enumerate(todo):
            if cfg.fail_after_batches is not None and n_batch == cfg.fail_after_batches:
                raise RuntimeError(f"injected failure after {n_batch} batches (fail_after_batches)")
            data = [inputs[i] for i, _ in items]
            batch = make_batch(data, cfg).to(device)
            calls = counter.calls if counter else 0
            pos, cell = generate(batch, cfg, model, batch_generator(cfg.seed, items, device), pool)
            nfe = (counter.calls - calls) if counter else 0
            records = records_of(batch, data, items, pos, cell, cfg, nfe, first)
            keep = [r for r, m in zip(records, missing) if m]
            broken = [sample_key(r) for r in keep if not (torch.isfinite(r.pos).all() and torch.isfinite(r.cell).all())]
            if broken:  # never dropped quietly: a run that "holds no entries" at the end says nothing
                raise FloatingPointError(
                    f"{len(broken)} sample(s) have non-finite positions or cell ((sid, sample_idx) "
                    f"{broken[:10]}); stopping, the samples written so far in {cfg.save_dir} are kept"
                )
            store.write(keep)
            stats["written"] += len(keep)
            stats["network_calls"] += nfe
            stats["nfe_samples"] += nfe * len(keep)
            if bar is not None:
                bar.update(len(keep))
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return _summarise(stats, elapsed, len(inputs), cfg, dist, device)


def _progress(total: int, cfg: GenConfig, main: bool):
    if not (main and cfg.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=f"sample {cfg.mode} {cfg.sampler}",
        unit="sample",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=1.0,
    )


def _summarise(stats: dict, elapsed: float, num_inputs: int, cfg: GenConfig, dist, device) -> dict:
    keys = list(stats)
    totals = all_reduce_sum(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64), dist)
    wall = torch.tensor([elapsed], dtype=torch.float64)
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.all_reduce(wall, op=tdist.ReduceOp.MAX)
    out = {k: int(v) for k, v in zip(keys, totals.tolist())}
    made = out["written"]
    wall_s = float(wall.item())
    return {
        "mode": cfg.mode,
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "t_start": cfg.t_start,
        "renoise": cfg.renoise,
        "churn": cfg.churn,
        "inputs": num_inputs,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,
        "world_size": dist.world_size,
        "device": str(device),
        "samples_written_this_run": out["written"],
        "network_calls_per_sample": (out["nfe_samples"] / made) if made else None,
        "network_calls_this_run": out["network_calls"],
        "sampling_wall_s": round(wall_s, 3),
        "samples_per_s": (made / wall_s) if made and wall_s > 0 else None,
    }


def finish(main_work=None):
    """Wait for every rank (if launched by torchrun), leave the group, then run ``main_work()`` on rank 0.

    Returns what ``main_work`` returned (None on other ranks).
    """
    import torch.distributed as tdist

    main = True
    if tdist.is_initialized():
        tdist.barrier()
        main = tdist.get_rank() == 0
        teardown_distributed()
    return main_work() if main and main_work is not None else None
