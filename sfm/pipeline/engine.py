"""The model and its optimizer under one training strategy, behind one small interface.

    engine.loss(batch, sync)   forward: (loss, parts), bf16 autocast when asked
    engine.backward(loss)      accumulate gradients of one micro-batch
    engine.step()              optimizer step after `gradient_accumulation_steps` micro-batches,
                               clipped; returns (grad_norm, applied); a non-finite gradient
                               skips the step (applied=False) on every rank alike
    engine.set_lr(lr)          the schedule's value for the coming step
    engine.local_params()      tensors the EMA follows (ZeRO-3: this rank's partitions)
    engine.ema_weights(ema)    context manager: the model runs with the EMA weights inside
    engine.full_state_dict()   context manager: the bare model's full state_dict, on every rank
    engine.save(dir) / load(dir)   model + optimizer state for exact resume

TorchEngine serves Single and DDP, DeepSpeedEngine the ZeRO stages. bf16 means torch autocast
around the forward with fp32 master weights, optimizer state and gradients in every strategy:
DeepSpeed's own bf16 mode would turn the module to bf16, and with it positions, lattices and
the energy normaliser buffers (bf16 has 8 bits of mantissa: 0.1 A at 35 A, eV-sized steps at
-300 eV).
"""

import math
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from sfm.pipeline.distributed import Dist
from sfm.pipeline.optim import build_optimizer


class LossForward(nn.Module):
    """forward(batch) = model.loss(batch): DDP and DeepSpeed hook into forward, not into .loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


class TorchEngine:
    """Single process, or DistributedDataParallel; plain torch AdamW and clip_grad_norm_."""

    def __init__(self, model: nn.Module, cfg, dist: Dist):
        self.dist, self.cfg = dist, cfg
        self.model = model.to(dist.device)
        self.net = LossForward(self.model)
        if dist.strategy == "DDP":
            # find_unused_parameters: heads may leave parameters out of a step (mask modes).
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.net, device_ids=ids, find_unused_parameters=True)
        else:
            self.wrapped = self.net
        self.optimizer = build_optimizer(self.model, cfg.max_lr, cfg.weight_decay)
        self.accum = cfg.gradient_accumulation_steps

    def loss(self, batch, sync: bool = True):
        if self.dist.strategy == "DDP":
            # As in nanoGPT: all-reduce gradients only on the last micro-batch of a step.
            self.wrapped.require_backward_grad_sync = sync
        with _autocast(self.dist.device, self.cfg.bf16):
            return self.wrapped(batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> tuple[float, bool]:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.clip_grad_norm if self.cfg.clip_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        applied = math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, applied

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_params(self) -> list[torch.Tensor]:
        return [p.data for p in self.model.parameters()]

    def ema_weights(self, ema):
        return ema.swapped_in(self.local_params())

    @contextmanager
    def full_state_dict(self):
        yield self.model.state_dict()

    def save(self, tag_dir) -> None:
        if self.dist.is_main:
            torch.save(
                {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, tag_dir / "engine.pt"
            )

    def load(self, tag_dir) -> None:
        state = torch.load(tag_dir / "engine.pt", map_location=self.dist.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1/2/3 around a torch AdamW; DeepSpeed does accumulation and clipping."""

    def __init__(self, model: nn.Module, cfg, dist: Dist):
        import deepspeed

        self.dist, self.cfg = dist, cfg
        self.model = model.to(dist.device)
        self.net = LossForward(self.model)
        stage = dist.zero_stage
        if stage == 3:
            # Parameters the model uses in .loss outside any submodule's forward must be gathered
            # when LossForward runs.
            for p in self.model.parameters(recurse=False):
                deepspeed.zero.register_external_parameter(self.net, p)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.train_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "gradient_clipping": cfg.clip_grad_norm,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**62,
        }
        optimizer = build_optimizer(self.model, cfg.max_lr, cfg.weight_decay)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=self.net, optimizer=optimizer, config=ds_config)

    def loss(self, batch, sync: bool = True):
        with _autocast(self.dist.device, self.cfg.bf16):
            return self.ds(batch)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed counts micro-batches in step(): it steps the optimizer on the last one.
        self.ds.backward(loss)
        skipped_before = self.ds.skipped_steps
        self.ds.step()
        self._skipped = self.ds.skipped_steps > skipped_before

    def step(self) -> tuple[float, bool]:
        norm = self.ds.get_global_grad_norm()
        return (float(norm) if norm is not None else math.nan), not self._skipped

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_params(self) -> list[torch.Tensor]:
        if self.dist.zero_stage == 3:
            return [p.ds_tensor.data for p in self.model.parameters()]
        return [p.data for p in self.model.parameters()]

    @contextmanager
    def ema_weights(self, ema):
        if self.dist.zero_stage != 3:
            with ema.swapped_in(self.local_params()):
                yield
            return
        # ZeRO-3 may keep parameters gathered between forwards (reuse distance): release them on
        # the way in and out, so that forwards gather from the swapped partitions.
        self.ds.empty_partition_cache()
        with ema.swapped_in(self.local_params()):
            try:
                yield
            finally:
                self.ds.empty_partition_cache()

    @contextmanager
    def full_state_dict(self):
        if self.dist.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                yield {k: v.clone() for k, v in self.model.state_dict().items()}
        else:
            yield self.model.state_dict()

    def save(self, tag_dir) -> None:
        self.ds.save_checkpoint(str(tag_dir.parent), tag=tag_dir.name, save_latest=False)

    def load(self, tag_dir) -> None:
        path, _ = self.ds.load_checkpoint(
            str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {tag_dir}")


def build_engine(model: nn.Module, cfg, dist: Dist):
    """TorchEngine for Single / DDP, DeepSpeedEngine for Zero1/2/3."""
    return DeepSpeedEngine(model, cfg, dist) if dist.zero_stage else TorchEngine(model, cfg, dist)
