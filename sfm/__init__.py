"""sfm: equivariant diffusion and energy/force models for periodic atomic structures."""

__version__ = "0.1.0"


def load_checkpoint(path, map_location="cpu"):
    """Load a self-describing consolidated checkpoint (.pt) into a ready model (eval mode)."""
    from sfm.pipeline.checkpoint import load_checkpoint as _load

    return _load(path, map_location=map_location)


def adsorb(out, relaxer, adsorbate="*OH", slab=None, **settings):
    """Adsorption-energy search on a slab (AdsorbML's workflow), the same code as
    ``python -m sfm.tasks.adsorb``; ``settings`` are the fields of
    :class:`sfm.pipeline.adsorb.AdsorbConfig` (heuristic=True, random=10, bulk=..., miller=...).
    Returns an :class:`~sfm.pipeline.adsorb.AdsorbResult` (rows, summary, best structures)::

        result = sfm.adsorb("runs/adsorb/Cu_OH", relaxer="ase.calculators.emt:EMT", adsorbate="*OH",
                            slab="Cu111.cif", heuristic=True, random=5)
        result.summary["best"]["adsorption_energy"], result.best[0]   # eV, ase.Atoms
    """
    from sfm.pipeline.adsorb import AdsorbConfig, run_adsorb

    return run_adsorb(AdsorbConfig(out=str(out), relaxer=relaxer, adsorbate=adsorbate, slab=slab, **settings))


__all__ = ["__version__", "adsorb", "load_checkpoint"]
