"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

The schedule is a pure function of the optimizer step, set on the optimizer's param groups
before every step (as in nanoGPT), so a resumed run needs only the step to be back on it.
"""

import math


def cosine_lr(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.01) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Rises linearly from max_lr / (warmup_steps + 1) to max_lr over `warmup_steps` steps, then
    follows half a cosine from max_lr down to max_lr * min_lr_ratio at `total_steps`; flat after.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    min_lr = max_lr * min_lr_ratio
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
