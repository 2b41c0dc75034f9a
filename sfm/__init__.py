"""sfm: equivariant diffusion and energy/force models for periodic atomic structures."""

__version__ = "0.1.0"


def load_checkpoint(path, map_location="cpu"):
    """Load a self-describing consolidated checkpoint (.pt) into a ready model (eval mode)."""
    from sfm.pipeline.checkpoint import load_checkpoint as _load

    return _load(path, map_location=map_location)


__all__ = ["__version__", "load_checkpoint"]
