"""eval_s2ef: metrics of a tiny checkpoint against a direct numpy computation, baselines, bad inputs."""

import json

import numpy as np
import pytest
import torch

import sfm
from sfm.data import Dictionary, LmdbDataset, collate, write_lmdb
from sfm.models import build_model
from sfm.pipeline.checkpoint import save_consolidated
from sfm.tasks import eval_s2ef


def save_tiny(path, world, head="s2ef", **meta):
    torch.manual_seed(0)
    model = build_model("tiny", head=head)
    if head == "s2ef":
        model.fit_normalizer(LmdbDataset(world / "s2ef" / "train"))
    meta = {
        "task": head,
        "dictionary": Dictionary.load().tokens,
        "args": {"train_data_path": str(world / "s2ef" / "train"), "data_kind": "s2ef"},
        **meta,
    }
    save_consolidated(path, state_dict=model.state_dict(), build_kwargs=model.build_kwargs, meta=meta)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(demo_world, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "model.pt", demo_world)


def by_hand(model, entries, pos_key, y_key, force_key):
    """Per-structure predictions one at a time, metrics in numpy (the OC20 definitions)."""
    de, fe, fa, cos, ok = [], [], [], [], []
    for d in entries:
        item = d.clone()
        item.pos = d[pos_key]
        out = model.predict(collate([item]))
        pos = d[pos_key]
        free = ~d.fixed.numpy()
        target_f = d[force_key].numpy() if force_key else np.zeros_like(pos.numpy())
        err_e = float(out["energy"][0]) - float(d[y_key])
        f, t = out["forces"].double().numpy()[free], target_f[free].astype(float)
        de.append(abs(err_e))
        fe.append(np.abs(f - t))
        fa.append(np.abs(f - t)[d.tags.numpy()[free] == 2])
        if force_key:
            cos += list((f * t).sum(1) / np.maximum(np.linalg.norm(f, axis=1) * np.linalg.norm(t, axis=1), 1e-8))
        ok.append(abs(err_e) < 0.02 and np.abs(f - t).max() < 0.03)
    return {
        "energy_mae": np.mean(de),
        "force_mae": np.concatenate(fe).mean(),
        "force_mae_adsorbate": np.concatenate(fa).mean() if force_key else None,
        "force_cos": np.mean(cos) if cos else None,
        "efwt": np.mean(ok),
    }


def test_s2ef_metrics_and_baselines_match_a_direct_computation(demo_world, tiny_ckpt, tmp_path):
    out_json = tmp_path / "eval.json"
    val = demo_world / "s2ef" / "val_id"
    report = eval_s2ef.main(
        [
            "--checkpoint",
            str(tiny_ckpt),
            "--data_path",
            str(val),
            "--json",
            str(out_json),
            "--batch_size",
            "3",
            "--no_progress",
        ]
    )
    assert json.loads(out_json.read_text())["splits"].keys() == {"s2ef/val_id"}
    got = report["splits"]["s2ef/val_id"]["frames"]
    entries = list(LmdbDataset(val))
    want = by_hand(sfm.load_checkpoint(tiny_ckpt), entries, "pos", "y", "force")
    assert got["structures"] == len(entries)
    free_tags = np.concatenate([d.tags.numpy()[~d.fixed.numpy()] for d in entries])
    assert got["free_atoms"] == len(free_tags) and got["free_adsorbate_atoms"] == (free_tags == 2).sum()
    assert 0 < want["force_mae_adsorbate"] != want["force_mae"]  # the demo's frames hold adsorbates
    for key, value in want.items():
        assert got["model"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    train = list(LmdbDataset(demo_world / "s2ef" / "train"))
    y = np.array([float(d.y) for d in train])
    y_val = np.array([float(d.y) for d in entries])
    assert got["train_mean"]["energy_mae"] == pytest.approx(np.abs(y_val - y.mean()).mean(), rel=1e-6)
    counts = np.zeros((len(train), 119))
    for n, d in enumerate(train):
        np.add.at(counts[n], d.atomic_numbers.numpy(), 1)
    present = counts.sum(0) > 0
    coef = np.zeros(119)
    coef[present] = np.linalg.lstsq(counts[:, present], y, rcond=None)[0]
    intercept = (y - counts @ coef).mean()
    pred = np.array([coef[d.atomic_numbers.numpy()].sum() + intercept for d in entries])
    assert got["linear_fit"]["energy_mae"] == pytest.approx(np.abs(y_val - pred).mean(), abs=1e-3)
    free_f = np.concatenate([d.force.numpy()[~d.fixed.numpy()] for d in entries])
    for base in ("train_mean", "linear_fit"):  # zero forces
        assert got[base]["force_mae"] == pytest.approx(np.abs(free_f).mean(), rel=1e-6)
        assert got[base]["force_cos"] == 0.0


def test_is2re_views(demo_world, tiny_ckpt):
    path = demo_world / "is2re" / "val_id"
    report = eval_s2ef.main(
        ["--checkpoint", str(tiny_ckpt), "--data_path", str(path), "--data_kind", "is2re", "--no_progress"]
    )
    views = report["splits"]["is2re/val_id"]
    entries = list(LmdbDataset(path))
    want = by_hand(sfm.load_checkpoint(tiny_ckpt), entries, "pos_relaxed", "y_relaxed", None)
    assert views["relaxed"]["model"]["energy_mae"] == pytest.approx(want["energy_mae"], rel=1e-4)
    assert views["relaxed"]["model"]["force_mae"] == pytest.approx(want["force_mae"], rel=1e-4)
    assert np.isnan(views["relaxed"]["model"]["force_cos"])  # zero targets: no direction
    assert set(views["initial"]["model"]) == {"energy_mae", "ewt"}
    y0 = np.array([float(d.y_init) for d in entries])
    assert views["initial"]["structures"] == len(entries) and np.isfinite(y0).all()


def test_bad_inputs(demo_world, tiny_ckpt, tmp_path, capsys):
    base = ["--checkpoint", str(tiny_ckpt), "--no_progress"]
    with pytest.raises(ValueError, match=r"'frames' view needs \['y'\].*use kind 'is2re'"):
        eval_s2ef.main(base + ["--data_path", str(demo_world / "is2re" / "val_id")])
    with pytest.raises(SystemExit):
        eval_s2ef.main(base + ["--data_path", str(tmp_path / "nope")])
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_s2ef.main(
            base + ["--data_path", str(demo_world / "s2ef" / "val_id"), "--train_data_path", str(tmp_path / "gone")]
        )
    assert "baselines need the training data" in capsys.readouterr().err
    diff = save_tiny(tmp_path / "diff.pt", demo_world, head="diffusion")
    with pytest.raises(SystemExit):
        eval_s2ef.main(["--checkpoint", str(diff), "--data_path", str(demo_world / "s2ef" / "val_id")])
    assert "not an S2EF one" in capsys.readouterr().err


def test_split_without_relaxed_fields_gets_the_right_hint(demo_world, tiny_ckpt, tmp_path):
    entries = list(LmdbDataset(demo_world / "is2re" / "val_id"))
    for d in entries:
        del d.pos_relaxed, d.y_relaxed
    write_lmdb(tmp_path / "test.lmdb", entries)
    with pytest.raises(
        ValueError,
        match=r"test\.lmdb\[0\]: the 'relaxed' view needs "
        r"\['pos_relaxed', 'y_relaxed'\], not stored \(a test split\? it stores no "
        r"pos_relaxed / y_relaxed",
    ):
        eval_s2ef.main(
            [
                "--checkpoint",
                str(tiny_ckpt),
                "--data_path",
                str(tmp_path / "test.lmdb"),
                "--data_kind",
                "is2re",
                "--no_progress",
                "--no_baselines",
            ]
        )


def test_nonfinite_labels_and_predictions_are_refused(demo_world, tiny_ckpt, tmp_path):
    """A NaN energy label: refused when read, naming the file, key and sid, and by the normaliser
    fit (API); a model whose normaliser holds NaN: eval refuses it naming the structures."""
    frames = list(LmdbDataset(demo_world / "s2ef" / "train"))
    frames[3].y = float("nan")
    write_lmdb(tmp_path / "nan_y.lmdb", frames)
    with pytest.raises(ValueError, match=rf"nan_y\.lmdb\[3\] \(sid {int(frames[3].sid)}\): energy label y is nan"):
        LmdbDataset(tmp_path / "nan_y.lmdb")[3]
    model = build_model("tiny", head="s2ef")
    with pytest.raises(
        ValueError, match=rf"non-finite energy label y in item 3 of the fitted data \(sid {int(frames[3].sid)}\)"
    ):
        model.fit_normalizer(frames)
    model = sfm.load_checkpoint(tiny_ckpt)
    model.normalizer.mean.fill_(float("nan"))  # what fitting on a NaN label used to leave behind
    save_consolidated(
        tmp_path / "nan.pt", state_dict=model.state_dict(), build_kwargs=model.build_kwargs, meta=model.checkpoint
    )
    val = demo_world / "s2ef" / "val_id"
    with pytest.raises(
        ValueError,
        match=r"predicts a non-finite energy or force for \d+ structure\(s\) \(sid .*"
        r"its normaliser holds non-finite mean",
    ):
        eval_s2ef.main(
            ["--checkpoint", str(tmp_path / "nan.pt"), "--data_path", str(val), "--no_progress", "--no_baselines"]
        )
