"""sfm.data.download against a local HTTP server on 127.0.0.1 serving a small tarball made here."""

import hashlib
import io
import tarfile
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sfm.data import LmdbDataset, write_lmdb
from sfm.data import download as dl

SPLIT_SIZES = {"10k/train": 3, "all/val_id": 2}


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files[name]`` with HTTP Range support; ``server.cut`` bytes, then hangs up once."""

    def do_GET(self):
        body = self.server.files.get(self.path.lstrip("/"))
        self.server.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut, self.server.cut = self.server.cut, None
        self.wfile.write(body[start : start + cut] if cut else body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests, httpd.cut = {}, [], None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def is2re_tarball(tmp_path, make_structure, monkeypatch):
    """A tarball laid out like fairchem's IS2RE one (is2res_train_val_test_lmdbs/data/is2re/...),
    with the catalogue pointed at its MD5 and the split sizes it holds."""
    stage = tmp_path / "stage"
    for folder, n in SPLIT_SIZES.items():
        write_lmdb(stage / folder / "data.lmdb", [make_structure(i) for i in range(n)])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(stage, arcname="is2res_train_val_test_lmdbs/data/is2re")
        readme = b"published README\n"
        info = tarfile.TarInfo("is2res_train_val_test_lmdbs/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    body = buf.getvalue()
    monkeypatch.setattr(dl, "IS2RE_ARCHIVE", replace(dl.IS2RE_ARCHIVE, md5=hashlib.md5(body).hexdigest()))
    monkeypatch.setattr(dl, "IS2RE_COUNTS", {**dl.IS2RE_COUNTS, **SPLIT_SIZES})
    return body


def run(server, out, *flags):
    url = f"http://127.0.0.1:{server.server_port}/"
    return dl.main(["--task", "is2re", "--out", str(out), "--base_url", url, *flags])


def test_interrupted_download_resumes_then_extracts_and_counts(server, is2re_tarball, tmp_path, capsys):
    name = dl.IS2RE_ARCHIVE.name
    server.files[name], server.cut = is2re_tarball, len(is2re_tarball) // 3
    with pytest.raises(SystemExit):
        run(server, tmp_path / "data", "--split", "10k")
    assert "rerun to resume" in capsys.readouterr().err
    part = tmp_path / "data" / f"{name}.part"
    assert part.stat().st_size == len(is2re_tarball) // 3 and not (tmp_path / "data" / "is2re" / "10k").exists()
    report = run(server, tmp_path / "data", "--split", "10k")
    assert server.requests[-1] == (f"/{name}", f"bytes={len(is2re_tarball) // 3}-")  # asked for the rest only
    assert report["extracted"] == ["10k/train"] and not part.exists() and not (tmp_path / "data" / name).exists()
    assert len(LmdbDataset(tmp_path / "data" / "is2re" / "10k" / "train" / "data.lmdb")) == 3
    assert not (tmp_path / "data" / "is2re" / "all").exists()  # only the split asked for


def test_complete_split_is_skipped_and_dry_run_fetches_nothing(server, is2re_tarball, tmp_path, capsys):
    server.files[dl.IS2RE_ARCHIVE.name] = is2re_tarball
    run(server, tmp_path / "data", "--split", "val_id")
    assert len(server.requests) == 1
    again = run(server, tmp_path / "data", "--split", "val_id")
    assert again["skipped"] == ["all/val_id"] and len(server.requests) == 1
    dry = run(server, tmp_path / "data", "--split", "10k", "--dry_run")
    assert dry["disk_needed_bytes"] == dl.IS2RE_ARCHIVE.size + dl.IS2RE_ARCHIVE.unpacked and len(server.requests) == 1
    assert "would fetch" in capsys.readouterr().out


def test_bad_checksum_refused_and_kept_aside(server, is2re_tarball, tmp_path, capsys):
    server.files[dl.IS2RE_ARCHIVE.name] = is2re_tarball[:100] + bytes([is2re_tarball[100] ^ 0xFF]) + is2re_tarball[101:]
    with pytest.raises(SystemExit):
        run(server, tmp_path / "data", "--split", "10k")
    assert "is not the published" in capsys.readouterr().err
    aside = list((tmp_path / "data").glob("*.bad-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == len(is2re_tarball)
    assert not (tmp_path / "data" / "is2re").exists() and not (tmp_path / "data" / dl.IS2RE_ARCHIVE.name).exists()


def test_count_mismatch_fails(server, is2re_tarball, tmp_path, monkeypatch, capsys):
    server.files[dl.IS2RE_ARCHIVE.name] = is2re_tarball
    monkeypatch.setattr(dl, "IS2RE_COUNTS", {**dl.IS2RE_COUNTS, "10k/train": 4})
    with pytest.raises(SystemExit):
        run(server, tmp_path / "data", "--split", "10k")
    assert "3 entries, the published split has 4" in capsys.readouterr().err


def test_s2ef_member_layout_and_unknown_split():
    folders = dl.plan("s2ef", "200k")[1]
    assert dl._member_split("s2ef_train_200K/s2ef_train_200K/0.extxyz.xz", "s2ef", folders) == (
        "200k/train",
        "0.extxyz.xz",
    )
    assert dl._member_split("s2ef_train_200K/README.txt", "s2ef", folders) is None
    test = dl.plan("s2ef", "test")[1]
    assert dl._member_split("s2ef_test_lmdbs/test_data/s2ef/all/test_id/data.0000.lmdb", "s2ef", test) == (
        "all/test_id",
        "data.0000.lmdb",
    )
    with pytest.raises(ValueError, match="points outside"):
        dl._member_split("../evil.txt", "s2ef", folders)
    with pytest.raises(ValueError, match="unknown --split '5k'"):
        dl.plan("is2re", "5k")
