"""Which relaxed placements of a dense split count, and its reference: the minimum over them.

A system's record in the dense mapping (:mod:`sfm.data.dense`, ``mapping.json``) lists its relaxed
placements (``configs``), each with ``y_relaxed`` (eV) and its ``anomalies`` (the kinds of
:mod:`sfm.data.anomaly`, plus ``unconverged``). A placement is disqualified when it is unconverged
or flagged with a kind in ``exclude``; the reference is the lowest ``y_relaxed`` among the others.
AdsorbML excludes every kind (:data:`ADSORBML_EXCLUDE`); the demo world's default
(:data:`EXCLUDE`) keeps ``dissociated`` ones, because EMT stretches X-H bonds past AdsorbML's
bond rule.
"""

from __future__ import annotations

EXCLUDE = ("desorbed", "surface_changed", "intercalated")  # disqualifying kinds by default (module docstring)
ADSORBML_EXCLUDE = ("desorbed", "dissociated", "surface_changed", "intercalated")


def disqualified(config: dict, exclude=EXCLUDE) -> bool:
    """Whether one relaxed placement (a ``configs`` entry) is out: unconverged, or flagged with
    a kind in ``exclude``."""
    return "unconverged" in config["anomalies"] or bool(set(config["anomalies"]) & set(exclude))


def reference(record: dict, exclude=EXCLUDE) -> dict | None:
    """The ``configs`` entry of a system's mapping ``record`` with the lowest ``y_relaxed`` among
    those not :func:`disqualified` (None if there is none): its ``y_relaxed`` is the reference."""
    valid = [c for c in record["configs"] if not disqualified(c, exclude)]
    return min(valid, key=lambda c: c["y_relaxed"]) if valid else None
