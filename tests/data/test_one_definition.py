"""Each structure convention has one definition in sfm/data; no copy of it lives elsewhere.

A grep over the package: a pattern that re-derives a convention may appear only in the module
that defines it (and, where listed, where a structure is first built from ASE objects).
"""

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sfm"

# pattern -> files (relative to sfm/) allowed to hold it, with why
ONE_HOME = {
    # the fixed mask: stored `fixed`, else tags == 0
    r"\"fixed\" (not )?in |tags == 0\b": {
        "data/structure.py": "the definition",
        "data/collate.py": "the batch contract's docstring",
        "data/lmdb_dataset.py": "dtype normalisation of a stored field",
        "data/demo.py": "the demo world stores `fixed` when it builds an entry",
        "relax/bench.py": "builds ASE slabs with FixAtoms",
        "relax/relax_batch.py": "docstring",
        "data/anomaly.py": "the subsurface (tags 0) for intercalation, not the fixed rule",
        "pipeline/adsorb.py": "a user's ase slab: its FixAtoms, else tags == 0 (on ase.Atoms, before any Data)",
    },
    # sid normalisation
    r"is_tensor\((\w+\.)?sid\)|sid\.item\(\)": {"data/structure.py": "the definition"},
    # the [., 3, 3] cell reshape
    r"\.reshape\((-1, |1, )?3, 3\)|\.view\((-1, |1, )?3, 3\)": {
        "data/lattice.py": "as_cells / as_cell",
        "models/so3.py": "a skew matrix, not a cell",
        "data/anomaly.py": "numpy arrays of any caller",
    },
    # NaN-to-None JSON
    r"isfinite\(\w+\) else \w+|def _strict\b|def json_safe\b": {"data/strict_json.py": "the definition"},
    # Data-to-Atoms
    r"Atoms\(numbers=": {
        "data/atoms.py": "the definition",
        "data/dense.py": "the dense world builds ase structures from its own arrays, no Data",
    },
    # the IS2RE-as-S2EF views
    r"y=float\(\w+\.y_(init|relaxed)\)|class IS2REAsS2EF|def labelled\b": {"data/views.py": "the definition"},
    # the given-tags mask and its flag text
    r"torch\.isin\(|\.split\(\",\"\) if t\.strip\(\)": {"data/structure.py": "tag_mask / parse_tags"},
}


def _hits(pattern):
    regex = re.compile(pattern)
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if regex.search(line)]
        if lines:
            out[path.relative_to(PACKAGE).as_posix()] = lines
    return out


@pytest.mark.parametrize("pattern", list(ONE_HOME))
def test_convention_has_one_home(pattern):
    hits = _hits(pattern)
    stray = {f: lines for f, lines in hits.items() if f not in ONE_HOME[pattern]}
    assert not stray, f"copies of a convention outside its home (use sfm/data): {stray}"
    assert set(hits) & {
        f for f, why in ONE_HOME[pattern].items() if why.startswith(("the definition", "as_cells", "tag_mask"))
    }, "definition not found"
