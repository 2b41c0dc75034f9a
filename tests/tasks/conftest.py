"""A two-system demo world (OC20 layout, EMT labels), built once per test session.

Besides the demo's own splits it holds `s2ef_few/{train,val_id}`: the first 8 and 4 S2EF
frames, so that a validation pass costs a few forwards.
"""

import pytest

from sfm.data import LmdbDataset, write_lmdb
from sfm.data.demo import make_demo


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks_demo") / "demo"
    make_demo(out, num_systems=2, workers=2, progress=False)
    for split, n in (("train", 8), ("val_id", 4)):
        frames = LmdbDataset(out / "s2ef" / split)
        write_lmdb(out / "s2ef_few" / split / "data.lmdb", (frames[i] for i in range(n)))
    return out
