"""gen_metrics CLI on small hand-made sample / reference LMDBs."""

import json
import re

import numpy as np
import pytest
import torch

from sfm.data import write_lmdb
from sfm.eval.gen_metrics import adwt_mask, main
from sfm.relax import atoms_to_data
from sfm.relax.bench import make_slabs


@pytest.fixture(scope="module")
def lmdbs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    refs = []
    for sid, atoms in enumerate(make_slabs(3, seed=1)):
        d = atoms_to_data(atoms, sid=sid, y_relaxed=torch.tensor(float(sid)))
        d.pos_relaxed = d.pos + 0.01  # a rigid shift: the same structure, 0.0173 A per atom away
        refs.append(d)

    def sample(ref, idx, pos=None, numbers=None, energy=0.0):
        d = ref.clone()
        del d.pos_relaxed, d.y_relaxed
        d.pos = ref.pos_relaxed.clone() if pos is None else pos
        if numbers is not None:
            d.atomic_numbers = numbers
        d.sample_idx, d.energy = idx, torch.tensor(energy)
        return d

    r0, r1, r2 = refs
    ads0 = r0.tags == 2
    far = r0.pos_relaxed.clone()
    far[ads0] += torch.tensor([0.0, 0.0, 1.0])  # adsorbate 1 A off: valid, no match at stol 0.1
    clash = r1.pos_relaxed.clone()
    clash[-1] = clash[0] + 0.1  # the adsorbate atom 0.1 A from a subsurface atom: invalid
    assert (clash[-1] - r1.pos_relaxed[-1]).norm() > 1.0
    swapped = r1.atomic_numbers.clone()
    swapped[-1] = 79  # composition changed
    samples = [
        sample(r0, 1, pos=far, energy=0.5),
        sample(r0, 0, energy=0.05),  # written out of order
        sample(r1, 0, pos=clash, energy=1.5),
        sample(r1, 1, numbers=swapped, energy=1.5),
        sample(r2, 0, energy=2.3),
        sample(r2, 1, energy=1.9),
    ]
    stray = sample(r2, 0)
    stray.sid = 99  # no such reference: reported, not scored
    write_lmdb(tmp / "ref.lmdb", refs)
    write_lmdb(tmp / "samples.lmdb", samples + [stray])
    return tmp


def test_gen_metrics_cli(lmdbs, capsys):
    out = lmdbs / "m.json"
    main(
        [
            "--samples",
            str(lmdbs / "samples.lmdb"),
            "--reference",
            str(lmdbs / "ref.lmdb"),
            "--json",
            str(out),
            "--stol",
            "0.1",
            "--energy_key",
            "energy",
        ]
    )
    m = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "match rate @1" in table and "wasserstein" not in table and "W1" in table
    assert (m["systems"], m["samples"], m["k"], m["unmatched_sids"]) == (3, 6, 2, 1)
    assert m["validity"] == pytest.approx(5 / 6) and m["composition_kept"] == pytest.approx(5 / 6)
    # first samples: system 0 exact, system 1 invalid, system 2 exact
    assert m["match@1"]["match_rate"] == pytest.approx(2 / 3)
    assert m["match@2"]["match_rate"] == pytest.approx(2 / 3)
    assert m["match@1"]["rmse"] == pytest.approx(0.0, abs=1e-6)
    # ADwT (adsorbate atoms vs pos_relaxed): per system, sample 0 of systems 0 and 2 sits at
    # 0 A, the clashing sample of system 1 at > 0.5 A (no threshold), the swapped one is a miss
    assert m["adwt@1"] == pytest.approx(2 / 3) and m["adwt@2"] == pytest.approx(2 / 3)
    # median over systems of those distances: (0, > 0.5, 0) -> 0; at 2 the best of each system
    assert m["distance@1"] == pytest.approx(0.0, abs=1e-6) and "median distance @1" in table
    # every sample as its own draw: the exact ones (system 0 #0, system 2 #0 and #1) of 6
    assert m["per_sample"] == {"match_rate": pytest.approx(3 / 6), "adwt": pytest.approx(3 / 6)}
    assert "every sample: match rate / ADwT  0.500 / 0.500" in table
    # uniqueness (stol 0.1): system 0 has 2 distinct, system 1 one valid, system 2 two equal
    assert m["uniqueness"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert m["lattice"]["a"]["wasserstein"] == pytest.approx(0.0, abs=1e-5)
    # energies vs y_relaxed = sid: 0.05 (ok), 1.5 / 1.5 (0.5 above), 2.3 / 1.9 (ok only @2)
    assert m["success@1"] == pytest.approx(1 / 3) and m["success@2"] == pytest.approx(2 / 3)
    assert np.isfinite(m["match@2"]["rmse"])


def test_adwt_mask_choices():
    ref = atoms_to_data(make_slabs(1, seed=0)[0])
    sample = ref.clone()
    assert torch.equal(adwt_mask(sample, ref, "generated"), ref.tags == 2)  # no mask stored: adsorbate
    sample.generated = torch.ones(ref.natoms, dtype=torch.bool)  # e.g. csp: every atom generated
    assert adwt_mask(sample, ref, "generated").all()
    assert torch.equal(adwt_mask(sample, ref, "free"), ~ref.fixed)
    assert adwt_mask(sample, ref, "all").all() and torch.equal(adwt_mask(sample, ref, "adsorbate"), ref.tags == 2)


def test_reference_without_relaxed_fields_skips_with_reason(lmdbs, tmp_path, capsys):
    """A test split (no pos_relaxed / y_relaxed) as reference: match, ADwT and success are
    skipped with the reason, never scored against `pos`; a reference lacking them only in some
    entries is refused, naming the sids."""
    from sfm.data import LmdbDataset

    refs = list(LmdbDataset(lmdbs / "ref.lmdb"))
    for d in refs:
        del d.pos_relaxed, d.y_relaxed
    write_lmdb(tmp_path / "test_split.lmdb", refs)
    m = main(
        [
            "--samples",
            str(lmdbs / "samples.lmdb"),
            "--reference",
            str(tmp_path / "test_split.lmdb"),
            "--energy_key",
            "energy",
        ]
    )
    table = capsys.readouterr().out
    assert not any(k.startswith(("match@", "adwt@", "distance@", "success@")) for k in m)
    assert "no pos_relaxed (a test split?)" in m["skipped"]["match, ADwT, distance"]
    assert "no y_relaxed" in m["skipped"]["success"]
    assert "skipped: match, ADwT, distance" in table and "match rate @1" not in table
    assert m["validity"] == pytest.approx(5 / 6)  # what needs no relaxed structure is still scored
    mixed = list(LmdbDataset(lmdbs / "ref.lmdb"))
    del mixed[1].pos_relaxed
    write_lmdb(tmp_path / "mixed.lmdb", mixed)
    with pytest.raises(ValueError, match=r"1 of 3 reference entries have no pos_relaxed, e.g. sid\(s\) \[1\]"):
        main(["--samples", str(lmdbs / "samples.lmdb"), "--reference", str(tmp_path / "mixed.lmdb")])


def test_success_against_the_dense_minimum(lmdbs, tmp_path, capsys):
    """--dense: success against each system's dense minimum, on the systems that have one (here
    y_relaxed = sid is beaten by a lower placement of system 2; system 1 has no valid placement)."""
    dense = tmp_path / "is2re_dense"
    dense.mkdir()

    def system(*placements):
        return {"split": "test_id", "configs": [{"y_relaxed": y, "anomalies": flags} for y, flags in placements]}

    mapping = {"0": system((0.0, []), (0.5, [])), "1": system((-3.0, ["desorbed"])), "2": system((1.7, []))}
    (dense / "mapping.json").write_text(json.dumps(mapping))
    m = main(
        [
            "--samples",
            str(lmdbs / "samples.lmdb"),
            "--reference",
            str(lmdbs / "ref.lmdb"),
            "--energy_key",
            "energy",
            "--dense",
            str(dense),
        ]
    )
    # system 0: 0.05 within 0.1 of 0.0; system 2: 2.3 / 1.9 both > 0.1 above 1.7
    assert m["success@1"] == 0.5 and m["success@2"] == 0.5
    assert m["success_reference"] == "dense minimum (2 systems)"
    assert re.search(r"placement success against +dense minimum \(2 systems\)", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["--samples", str(lmdbs / "samples.lmdb"), "--reference", str(lmdbs / "ref.lmdb"), "--dense", str(dense)])
    (dense / "mapping.json").write_text(json.dumps({"7": system((0.0, []))}))
    with pytest.raises(ValueError, match="no sample sid has a dense reference"):
        main(
            [
                "--samples",
                str(lmdbs / "samples.lmdb"),
                "--reference",
                str(lmdbs / "ref.lmdb"),
                "--energy_key",
                "energy",
                "--dense",
                str(dense),
            ]
        )
