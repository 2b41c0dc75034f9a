"""Checkpoints: the consolidated self-describing `.pt`, and the resume state of a run.

Layout of a run's `save_dir`:

    save_dir/config.json               resolved training config (also inside every checkpoint)
    save_dir/run.lock                  held by the running trainer: a second run here is refused (run_lock.py)
    save_dir/metrics.jsonl, tb/        logs
    save_dir/model.pt                  consolidated checkpoint of the finished run
    save_dir/checkpoints/latest        name of the last complete checkpoint (written last)
    save_dir/checkpoints/step_0001000/
        model.pt                       consolidated checkpoint at that step
        trainer.pt                     step, data position, counters, EMA (unless sharded), config
        rank_00000.pt ...              per-rank RNG states (+ EMA partition under ZeRO-3)
        engine.pt | DeepSpeed files    model + optimizer state of the engine

The consolidated checkpoint is a plain dict (torch.save, loadable with weights_only=True):

    format="sfm", format_version, version (sfm package), build_kwargs, state_dict (EMA
    weights; normalisers are buffers in it), dictionary (token list), args (the run's
    arguments), config (trainer config), step, epoch, task, plus task-specific entries.

`load_checkpoint(path)` rebuilds the model with `sfm.models.build_model(**build_kwargs)` and
needs neither DeepSpeed nor the command line of the run that wrote it.
"""

import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import sfm

FORMAT = "sfm"
FORMAT_VERSION = 1
LATEST = "latest"


def step_tag(step: int) -> str:
    return f"step_{step:07d}"


def save_consolidated(path, *, state_dict: dict, build_kwargs: dict, meta: dict) -> None:
    """Write the self-describing checkpoint atomically (temp file, then rename)."""
    ckpt = dict(meta)
    ckpt.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        version=sfm.__version__,
        build_kwargs=dict(build_kwargs),
        state_dict={k: v.detach().cpu() for k, v in state_dict.items()},
    )
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def read_consolidated(path, map_location="cpu") -> dict:
    """The checkpoint dict, after checking that it is an sfm checkpoint this version can read."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: pass the consolidated file, e.g. {path / 'model.pt'}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an sfm consolidated checkpoint (no format='sfm' key)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {ckpt['format_version']}, written by sfm {ckpt.get('version')}; "
            f"this sfm ({sfm.__version__}) reads formats up to {FORMAT_VERSION}: upgrade sfm"
        )
    return ckpt


def load_checkpoint(path, map_location="cpu", build_fn=None):
    """Model from a consolidated checkpoint, in eval mode, with `.checkpoint` = the dict minus weights.

    build_fn(**build_kwargs) builds the architecture; default `sfm.models.build_model`.
    """
    ckpt = read_consolidated(path, map_location)
    stored, embedded = ckpt.get("dictionary"), ckpt["build_kwargs"].get("dictionary")
    if stored is not None and embedded is not None and list(stored) != list(embedded):
        # written before the model was built with --dict_path: it would accept elements it never saw
        raise ValueError(
            f"{path}: the checkpoint's dictionary ({len(stored)} tokens) is not the one its model "
            f"embeds with ({len(embedded)} tokens); retrain it"
        )
    if build_fn is None:
        from sfm.models import build_model as build_fn
    model = build_fn(**ckpt["build_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location).eval()
    model.checkpoint = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model


def init_weights(model, path, free=(), may_differ=()) -> dict:
    """Copy a consolidated checkpoint's weights (EMA, normaliser buffers included) into ``model``, the
    start of a fine-tuning run; the checkpoint dict minus weights comes back.

    ``free``: parameter-name prefixes the model may have that the checkpoint lacks, or the reverse
    (they keep their initialisation or are dropped, e.g. a direct-force head when fine-tuning with
    conservative forces; where both have them they are loaded); ``may_differ``: build_kwargs
    allowed to differ (loss weights, the force mode). ValueError naming the file for another
    architecture or dictionary.
    """
    ckpt = read_consolidated(path)
    ours, theirs = model.build_kwargs, ckpt["build_kwargs"]
    differ = sorted(k for k in set(ours) | set(theirs) if k not in may_differ and ours.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ if k != "dictionary")
        raise ValueError(f"{path}: another model than this run builds ({shown or 'dictionary'})")
    own = model.state_dict().keys()  # a free part both have is loaded; one side's alone is dropped or kept
    state = {k: v for k, v in ckpt["state_dict"].items() if k in own or not k.startswith(tuple(free))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(free))]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_tag_dir(ckpt_root) -> Path | None:
    """The last complete checkpoint directory under `ckpt_root`, or None."""
    latest = Path(ckpt_root) / LATEST
    if not latest.exists():
        return None
    tag_dir = Path(ckpt_root) / latest.read_text().strip()
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"{latest} names {tag_dir.name}, which does not exist")
    return tag_dir


def mark_latest(ckpt_root, tag: str, keep: int) -> None:
    """Point `latest` at `tag` (atomically), then delete all but the `keep` newest step directories."""
    root = Path(ckpt_root)
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(tag + "\n")
    os.replace(tmp, root / LATEST)
    if keep > 0:
        tags = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in tags[:-keep]:
            if old.name != tag:
                try:
                    shutil.rmtree(old)
                except OSError as err:  # the run goes on, but a disk filling with old checkpoints is said
                    print(
                        f"[sfm] warning: could not delete the old checkpoint {old}: {err}", file=sys.stderr, flush=True
                    )
