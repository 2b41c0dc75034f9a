"""sfm.eval.paired: the paired per-system comparison of two sample sets, on hand-made LMDBs."""

import json

import pytest
import torch

from sfm.data import write_lmdb
from sfm.eval.paired import compare, main
from sfm.relax import atoms_to_data
from sfm.relax.bench import make_slabs


@pytest.fixture(scope="module")
def lmdbs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paired")
    refs = []
    for sid, atoms in enumerate(make_slabs(4, seed=2)):
        d = atoms_to_data(atoms, sid=sid)
        d.pos_relaxed = d.pos.clone()
        refs.append(d)

    def sample(ref, shift):
        d = ref.clone()
        del d.pos_relaxed
        d.pos = ref.pos_relaxed + shift * (ref.tags == 2)[:, None] * torch.tensor([0.0, 0.0, 1.0])
        d.sample_idx = 0
        return d

    write_lmdb(tmp / "ref.lmdb", refs)
    write_lmdb(tmp / "exact.lmdb", [sample(r, 0.0) for r in refs])  # the adsorbate at pos_relaxed
    write_lmdb(tmp / "off.lmdb", [sample(r, 1.0) for r in refs[:3]])  # 1 A above it; the last system missing
    return tmp


def test_exact_samples_beat_displaced_ones(lmdbs, capsys):
    out = lmdbs / "paired.json"
    r = main(
        [
            "--reference",
            str(lmdbs / "ref.lmdb"),
            "--samples",
            str(lmdbs / "exact.lmdb"),
            "--baseline",
            str(lmdbs / "off.lmdb"),
            "--json",
            str(out),
            "--resamples",
            "200",
        ]
    )
    assert r == json.loads(out.read_text())
    # 3 common systems; every exact sample is at 0 A (below every ADwT threshold), every displaced at 1 A
    assert r["systems"] == 3 and r["adwt"] == 1.0 and r["adwt_baseline"] == 0.0
    assert r["difference"] == 1.0 and r["interval_90"] == [1.0, 1.0] and r["p_difference_positive"] == 1.0
    assert r["closer"] == 1.0 and r["median_distance"] == pytest.approx(0.0, abs=1e-9)
    assert r["median_distance_baseline"] == pytest.approx(1.0)
    assert "difference +1.000" in capsys.readouterr().out


def test_ties_missing_and_bad_input(lmdbs, capsys):
    tie = compare({1: 0.2, 2: float("nan")}, {1: 0.2, 2: 0.3, 3: 0.1}, resamples=50)
    # the nan (a miss) is farther than anything; equal distances are not "closer"
    assert tie["systems"] == 2 and tie["closer"] == 0.0 and tie["difference"] < 0
    with pytest.raises(ValueError, match="share no system"):
        compare({1: 0.1}, {2: 0.1})
    for flags, message in (
        (["--samples", str(lmdbs / "nope.lmdb")], "no such file"),
        (["--resamples", "0"], "--resamples"),
    ):
        args = [
            "--reference",
            str(lmdbs / "ref.lmdb"),
            "--samples",
            str(lmdbs / "exact.lmdb"),
            "--baseline",
            str(lmdbs / "off.lmdb"),
        ] + flags
        with pytest.raises(SystemExit):
            main(args)
        assert message in capsys.readouterr().err
