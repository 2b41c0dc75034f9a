"""S2EF head: conservative forces and stress against finite differences, direct forces
rotate, loss on free atoms, normaliser, predict, rebuild from build_kwargs."""

import json

import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch, Data

from sfm.data import Dictionary
from sfm.models import PRESETS, BackboneConfig, build_model
from sfm.models.build import RUNTIME_FIELDS
from sfm.models.normalizer import EnergyNormalizer


def s2ef_model(dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build_model("tiny", **overrides).to(dtype).eval()
    finally:
        torch.set_default_dtype(old)


def structures(eqv2_cell, seeds=(0, 1), sizes=(4, 5), dtype=torch.float32):
    items = []
    for seed, n in zip(seeds, sizes):
        z, frac, lattice = eqv2_cell(seed, n=n)
        lattice = lattice.to(dtype)
        g = torch.Generator().manual_seed(seed)
        items.append(
            Data(
                atomic_numbers=z,
                pos=frac.to(dtype) @ lattice[0],
                cell=lattice,
                y=torch.tensor([float(n)], dtype=dtype),
                force=torch.randn(n, 3, generator=g, dtype=dtype),
                fixed=torch.arange(n) < 2,
            )
        )
    return Batch.from_data_list(items)


def energy_of(model, batch, pos, cell):
    return model(batch.atomic_numbers, pos, cell, batch.batch, forces=False)["energy"]


def test_conservative_forces_and_stress_are_energy_derivatives(eqv2_cell, device):
    model = s2ef_model(torch.float64, forces="conservative", max_neighbors=None).to(device)
    model.normalizer.std.fill_(50.0)  # forces of order 0.01-0.1 eV/A
    batch = structures(eqv2_cell, dtype=torch.float64).to(device)
    out = model.predict(batch, stress=True)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 2), (6, 1)]:
        step = torch.zeros_like(batch.pos)
        step[atom, axis] = h
        de = energy_of(model, batch, batch.pos + step, batch.cell)
        de = de - energy_of(model, batch, batch.pos - step, batch.cell)
        assert torch.isclose(-de.sum() / (2 * h), out["forces"][atom, axis], rtol=1e-6, atol=1e-9)
    # stress: homogeneous strain of cell and positions, (1/V) dE/d(strain)
    volume = torch.linalg.det(batch.cell).abs()
    for a, b in [(0, 0), (1, 2), (2, 2)]:
        eps = torch.zeros(3, 3, dtype=torch.float64, device=device)
        eps[a, b] = eps[b, a] = h / 2 if a != b else h
        energies = []
        for sign in (1, -1):
            strain = torch.eye(3, dtype=torch.float64, device=device) + sign * eps
            energies.append(energy_of(model, batch, batch.pos @ strain, batch.cell @ strain))
        numeric = (energies[0] - energies[1]) / (2 * h) / volume
        assert torch.allclose(numeric, out["stress"][:, a, b], rtol=1e-6, atol=1e-10)


def test_forces_rotate_and_energy_is_invariant(eqv2_cell, device):
    torch.manual_seed(5)
    rot = o3.rand_matrix().to(device)
    for mode in ("direct", "conservative"):
        model = s2ef_model(forces=mode, grid_resolution=32).to(device)
        batch = structures(eqv2_cell).to(device)
        out = model.predict(batch)
        batch.pos, batch.cell = batch.pos @ rot.T, batch.cell @ rot.T
        out_rot = model.predict(batch)
        scale = out["forces"].abs().max()
        assert (out_rot["forces"] - out["forces"] @ rot.T).abs().max() < 1e-5 * scale, mode
        assert torch.allclose(out_rot["energy"], out["energy"], rtol=1e-5, atol=1e-6), mode


def test_loss_uses_free_atoms_only_and_energy_only_without_forces(eqv2_cell):
    model = s2ef_model()
    batch = structures(eqv2_cell)
    loss, parts = model.loss(batch)
    assert set(parts) == {"loss", "energy_loss", "energy_mae", "force_loss", "force_mae"}
    assert torch.isclose(loss, 4 * parts["energy_loss"] + 100 * parts["force_loss"])
    batch.force[batch.fixed] += 10.0  # fixed atoms' forces are not learned
    assert torch.isclose(model.loss(batch)[0], loss)
    del batch.force
    energy_only, parts = model.loss(batch)
    assert set(parts) == {"loss", "energy_loss", "energy_mae"} and torch.isclose(energy_only, 4 * parts["energy_loss"])


def test_energy_loss_mae_or_mse_of_the_normalised_energy(eqv2_cell):
    batch = structures(eqv2_cell)
    batch.y = batch.y + torch.tensor([3.0, -0.2])  # one structure far off, one near
    del batch.force
    for kind, reduce in (("mae", torch.abs), ("mse", torch.square)):
        model = s2ef_model(energy_loss=kind)  # same seed: same weights for both
        with torch.no_grad():
            energy = model(batch.atomic_numbers, batch.pos, batch.cell, batch.batch, forces=False)["energy"]
        error = (energy - batch.y) / model.normalizer.std  # in the normaliser's units, from the eV
        loss, parts = model.loss(batch)
        assert torch.isclose(parts["energy_loss"], reduce(error).mean()) and torch.isclose(
            loss, 4 * parts["energy_loss"]
        )
        assert torch.isclose(parts["energy_mae"], (energy - batch.y).abs().mean())  # reported as MAE either way
    with pytest.raises(ValueError, match="energy_loss must be one of"):
        s2ef_model(energy_loss="huber")


def test_adsorbate_force_weight_is_a_weighted_mean_over_free_atoms(eqv2_cell):
    batch = structures(eqv2_cell)
    batch.tags = torch.tensor([0, 0, 1, 2, 0, 0, 1, 2, 2])  # 3 of the 5 free atoms are adsorbate atoms
    model = s2ef_model(adsorbate_force_weight=4.0)
    _, parts = model.loss(batch)
    with torch.no_grad():
        out = model(batch.atomic_numbers, batch.pos, batch.cell, batch.batch)
    free = ~batch.fixed
    err = (out["forces"] - batch.force)[free].norm(dim=-1) / model.normalizer.force_std
    weight = torch.tensor([1.0, 4.0, 1.0, 4.0, 4.0])
    assert torch.isclose(parts["force_loss"], (err * weight).sum() / 14.0)
    assert not torch.isclose(parts["force_loss"], err.mean())  # the weight changed the loss
    assert torch.isclose(s2ef_model(adsorbate_force_weight=1.0).loss(batch)[1]["force_loss"], err.mean())
    with pytest.raises(ValueError, match="adsorbate_force_weight must be > 0"):
        s2ef_model(adsorbate_force_weight=0.0)


@pytest.mark.parametrize("mode", ["direct", "conservative"])
def test_training_step_reaches_every_parameter(eqv2_cell, mode, device):
    model = s2ef_model(forces=mode).to(device).train()
    loss, _ = model.loss(structures(eqv2_cell).to(device))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []  # DDP needs every parameter used


def test_normalizer_fit_round_trip_and_precision():
    torch.manual_seed(0)
    refs = {1: -3.5, 8: -7.25, 29: -410.0}
    items = []
    for i in range(20):
        z = torch.tensor([1, 8, 29])[torch.randint(0, 3, (6,))]
        y = sum(refs[int(v)] for v in z) + 0.1 * torch.randn(()).item()
        force, fixed = 2 * torch.randn(6, 3), torch.arange(6) < 2
        items.append(Data(atomic_numbers=z, pos=torch.rand(6, 3), y=torch.tensor([y]), force=force, fixed=fixed))
    norm = EnergyNormalizer()
    fitted = norm.fit(Batch.from_data_list(items[i : i + 5]) for i in range(0, 20, 5))
    assert all(abs(fitted["element_refs"][z] - refs[z]) < 0.1 for z in refs)
    assert 0.01 < fitted["std"] < 0.3 and 1.5 < fitted["force_std"] < 2.5
    batch = Batch.from_data_list(items[:3])
    energy = batch.y.double()
    normalized = norm.normalize_energy(energy, batch.atomic_numbers, batch.batch)
    assert torch.allclose(norm.energy(normalized, batch.atomic_numbers, batch.batch), energy)
    norm.float()  # stays float64: references of hundreds of eV
    assert norm.element_refs.dtype == torch.float64 and norm.element_refs[29] == fitted["element_refs"][29]
    assert set(norm.state_dict()) == {"mean", "std", "force_std", "element_refs"}


def test_build_kwargs_rebuild_and_predict(eqv2_cell):
    model = s2ef_model(forces="direct", num_layers=1)
    model.normalizer.mean.fill_(-12.0)
    kwargs = json.loads(json.dumps(model.build_kwargs))
    assert kwargs.pop("dictionary") == Dictionary.load().tokens
    shape = {k: kwargs.pop(k) for k in list(kwargs) if k in BackboneConfig.__annotations__}
    assert kwargs == {"model_type": "tiny", "head": "s2ef", "forces": "direct"}
    preset = {**BackboneConfig().to_dict(), **PRESETS["tiny"], "num_layers": 1}
    assert shape == {k: v for k, v in preset.items() if k not in RUNTIME_FIELDS}  # how to run is not recorded
    clone = build_model(**model.build_kwargs).eval()
    clone.load_state_dict(model.state_dict())
    batch = structures(eqv2_cell)
    out, out_clone = model.predict(batch), clone.predict(batch)
    assert out["energy"].shape == (2,) and out["forces"].shape == (9, 3)
    assert torch.equal(out["energy"], out_clone["energy"]) and torch.equal(out["forces"], out_clone["forces"])
    with pytest.raises(ValueError, match="conservative"):
        model.predict(batch, stress=True)
    with pytest.raises(ValueError):
        build_model("tiny", head="nope")
    with pytest.raises(TypeError):
        build_model("tiny", not_an_option=1)


def test_a_preset_change_does_not_change_a_rebuilt_model(monkeypatch):
    model = s2ef_model(forces="direct", num_layers=1)
    grid = model.backbone.cfg.grid_resolution
    monkeypatch.setitem(PRESETS, "tiny", {**PRESETS["tiny"], "grid_resolution": grid + 2})
    assert build_model(**model.build_kwargs).backbone.cfg.grid_resolution == grid


def test_nan_force_label_on_a_free_atom_is_named_at_fitting_time(make_structure, tmp_path):
    from sfm.data import LmdbDataset, write_lmdb

    frames = [make_structure(i, s2ef=True) for i in range(4)]
    free = int((frames[2].fixed == 0).nonzero()[0])
    frames[2].force[free, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"non-finite force label on a free atom in item 2 of the fitted data \(sid 2\)"
    ):
        build_model("tiny", head="s2ef").fit_normalizer(frames)
    write_lmdb(tmp_path / "frames.lmdb", frames)
    with pytest.raises(ValueError, match=rf"frames\.lmdb\[2\] \(sid 2\): force has NaN/inf at atom\(s\) \[{free}\]"):
        LmdbDataset(tmp_path / "frames.lmdb")[2]


def test_nan_positions_through_the_api_are_refused_where_the_graph_is_built(make_structure):
    """Past the reader's checks (a Data built in Python): a clear error, not an IndexError."""
    from sfm.data import collate

    items = [make_structure(i, s2ef=True) for i in range(3)]
    batch = collate(items)
    batch.pos[batch.ptr[1] + 2, 0] = float("nan")  # an atom of the second structure
    with pytest.raises(ValueError, match=r"non-finite positions or lattice in structure\(s\) \[1\]"):
        build_model("tiny", head="s2ef").predict(batch)


def test_an_element_outside_the_training_data_is_warned_about_once(eqv2_cell):
    """predict names an element whose reference the normaliser did not fit (not in the training
    data), once per model; an unfitted normaliser (no references) says nothing."""
    import warnings

    batch = structures(eqv2_cell)
    model = s2ef_model(num_layers=1)
    present = batch.atomic_numbers.unique()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(batch)  # references not fitted: nothing known, nothing said
        model.normalizer.element_refs[present] = -1.0  # as a fit on these structures leaves them
        model.predict(batch)
    palladium = batch.clone()
    palladium.atomic_numbers = palladium.atomic_numbers.clone()
    palladium.atomic_numbers[0] = 46
    with pytest.warns(UserWarning, match=r"Pd \(Z=46\): not in this model's training data"):
        model.predict(palladium)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(palladium)  # said once
    assert model.trained_elements()[present].all() and not model.trained_elements()[46]


@pytest.mark.parametrize("layers", [1, 2])
def test_energy_branch_starts_as_the_trunk_and_trains_the_energy_alone(eqv2_cell, layers):
    batch = structures(eqv2_cell)
    base = s2ef_model()
    model = s2ef_model(energy_branch=layers)  # eval mode: no dropout, so outputs compare exactly
    model.load_state_dict(base.state_dict(), strict=False)  # the trunk and heads; the branch is new
    model.start_energy_branch()
    with torch.no_grad():
        ref, out = (m(batch.atomic_numbers, batch.pos, batch.cell, batch.batch) for m in (base, model))
    assert torch.allclose(out["forces"], ref["forces"], atol=1e-6) and torch.allclose(
        out["energy"], ref["energy"], atol=1e-6
    )
    loss, _ = model.train().loss(batch)
    loss.backward()
    model.eval()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith(("energy_blocks.", "energy_norm.", "energy_head.")) for n in trained)
    assert {n for n, _ in model.named_parameters() if n.startswith("energy_blocks.")} <= trained
    frozen = {n: p.clone() for n, p in model.named_parameters() if n not in trained}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with torch.no_grad():
        after = model(batch.atomic_numbers, batch.pos, batch.cell, batch.batch)
    assert torch.allclose(after["forces"], ref["forces"], atol=1e-6)  # the forces cannot move
    assert not torch.allclose(after["energy"], ref["energy"], atol=1e-3)  # the energies do
    with pytest.raises(ValueError, match="energy_branch must be 0..2"):
        s2ef_model(energy_branch=3)
    with pytest.raises(ValueError, match="energy_branch needs direct forces"):
        s2ef_model(energy_branch=1, forces="conservative")
    with pytest.raises(ValueError, match="no energy branch"):
        base.start_energy_branch()
