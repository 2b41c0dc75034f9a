"""OC20 in one command: download, verify, extract into the README layout, count.

    python -m sfm.data.download --task is2re --split 10k --out data/ [--dry_run]
    python -m sfm.data.download --task s2ef --split 200k --out data/

File names, URLs, MD5 checksums and sizes are fairchem's published ones: the tables of
``docs/core/datasets/oc20.md`` and ``src/fairchem/core/scripts/download_data.py`` (FAIR-Chem/
fairchem, ``DOWNLOAD_LINKS_*`` and ``S2EF_COUNTS``); the IS2RE split sizes are the "Version 2,
Feb 2021" numbers of the same page's changelog. Sizes there are rounded (``8.1G``): they size
``--dry_run``'s disk estimate; the checksum is what verifies a file.

- Resumable: bytes go to ``<file>.part`` and a rerun asks the server for the rest (HTTP Range).
- Verified: a completed download whose MD5 differs is moved aside to ``<file>.bad-<md5>`` and
  the command fails; nothing is extracted from it.
- Extracted into ``OUT/is2re/{10k,100k,all}/train``, ``OUT/is2re/all/{val,test}_*`` (IS2RE LMDBs),
  ``OUT/s2ef/{200k,2M,20M,all,rattled,md}/train``, ``OUT/s2ef/all/val_*`` (S2EF ``*.extxyz.xz`` +
  ``*.txt`` as published; ``sfm.data.open_dataset`` reads the folder, ``sfm.data.convert`` makes an
  LMDB of it) and ``OUT/s2ef/all/test_*`` (LMDBs); a split appears only once completely extracted.
- Counted: entries per split against the published sizes (LMDB entries; S2EF: the lines of its
  ``*.txt`` files, one per frame, as fairchem's ``verify_count``); a split already complete is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sfm.data.lmdb_dataset import LmdbDataset, _close_reader

FRAME_FILES = (".extxyz", ".extxyz.xz", ".txt", ".txt.xz")  # what an S2EF train / val split is made of
BASE_URL = "https://dl.fbaipublicfiles.com/opencatalystproject/data/"
_G = 1 << 30


@dataclass(frozen=True)
class Archive:
    """One published tarball: ``name`` under the base URL, its MD5, rounded sizes (bytes)."""

    name: str
    md5: str
    size: int
    unpacked: int


IS2RE_ARCHIVE = Archive(
    "is2res_train_val_test_lmdbs.tar.gz", "cfc04dd2f87b4102ab2f607240d25fb1", int(8.1 * _G), 97 * _G
)
S2EF_ARCHIVES = {
    "200k": Archive("s2ef_train_200K.tar", "f8d0909c2623a393148435dede7d3a46", 344 << 20, int(1.7 * _G)),
    "2M": Archive("s2ef_train_2M.tar", "953474cb93f0b08cdc523399f03f7c36", int(3.4 * _G), 17 * _G),
    "20M": Archive("s2ef_train_20M.tar", "863bc983245ffc0285305a1850e19cf7", 34 * _G, 165 * _G),
    "all": Archive("s2ef_train_all.tar", "12a7087bfd189a06ccbec9bc7add2bcd", 225 * _G, 1126 * _G),
    "val_id": Archive("s2ef_val_id.tar", "f57f7f5c1302637940f2cc858e789410", int(1.7 * _G), int(8.3 * _G)),
    "val_ood_ads": Archive("s2ef_val_ood_ads.tar", "431ab0d7557a4639605ba8b67793f053", int(1.7 * _G), int(8.2 * _G)),
    "val_ood_cat": Archive("s2ef_val_ood_cat.tar", "532d6cd1fe541a0ddb0aa0f99962b7db", int(1.7 * _G), int(8.3 * _G)),
    "val_ood_both": Archive("s2ef_val_ood_both.tar", "5731862978d80502bbf7017d68c2c729", int(1.9 * _G), int(9.5 * _G)),
    "test": Archive("s2ef_test_lmdbs.tar.gz", "bcada432482f6e87b24e14b6b744992a", 30 * _G, 415 * _G),
    "rattled": Archive("s2ef_rattled.tar", "40431149b27b64ce1fb40cac4e2e064b", 29 * _G, 136 * _G),
    "md": Archive("s2ef_md.tar", "9fed845aaab8fb4bf85e3a8db57796e0", 42 * _G, 306 * _G),
}
# Published entries per split (folder under OUT/<task>/ -> count).
IS2RE_COUNTS = {
    "10k/train": 10_000,
    "100k/train": 100_000,
    "all/train": 460_328,
    "all/val_id": 24_943,
    "all/val_ood_ads": 24_961,
    "all/val_ood_cat": 24_963,
    "all/val_ood_both": 24_987,
    "all/test_id": 24_948,
    "all/test_ood_ads": 24_930,
    "all/test_ood_cat": 24_965,
    "all/test_ood_both": 24_985,
}
S2EF_COUNTS = {
    "200k/train": 200_000,
    "2M/train": 2_000_000,
    "20M/train": 20_000_000,
    "all/train": 133_934_018,
    "rattled/train": 16_677_031,
    "md/train": 38_315_405,
    "all/val_id": 999_866,
    "all/val_ood_ads": 999_838,
    "all/val_ood_cat": 999_809,
    "all/val_ood_both": 999_944,
    "all/test_id": 999_736,
    "all/test_ood_ads": 999_859,
    "all/test_ood_cat": 999_826,
    "all/test_ood_both": 999_973,
}
IS2RE_SPLITS = {
    "10k": ["10k/train"],
    "100k": ["100k/train"],
    "all": ["all/train"],
    **{
        s: [f"all/{s}"]
        for s in (
            "val_id",
            "val_ood_ads",
            "val_ood_cat",
            "val_ood_both",
            "test_id",
            "test_ood_ads",
            "test_ood_cat",
            "test_ood_both",
        )
    },
}
S2EF_SPLITS = {
    **{s: [f"{s}/train"] for s in ("200k", "2M", "20M", "all", "rattled", "md")},
    **{s: [f"all/{s}"] for s in ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")},
    "test": [f"all/test_{s}" for s in ("id", "ood_ads", "ood_cat", "ood_both")],
}


def plan(task: str, split: str) -> tuple[Archive, list[str], dict[str, int]]:
    """``(archive, split folders under OUT/<task>, published counts)`` of one task and split."""
    splits, counts = (IS2RE_SPLITS, IS2RE_COUNTS) if task == "is2re" else (S2EF_SPLITS, S2EF_COUNTS)
    if split not in splits:
        raise ValueError(f"--task {task}: unknown --split {split!r}; choose from {', '.join(splits)}")
    archive = IS2RE_ARCHIVE if task == "is2re" else S2EF_ARCHIVES[split]
    return archive, splits[split], counts


def count_entries(folder: Path) -> int:
    """Entries of one extracted split: LMDB entries, else lines of its ``*.txt`` / ``*.txt.xz`` frame lists."""
    if any(folder.glob("*.lmdb")):
        return len(LmdbDataset(folder))
    total = 0
    for path in sorted(folder.glob("*.txt")) + sorted(folder.glob("*.txt.xz")):
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rt") as handle:
            total += sum(1 for line in handle if line.strip())
    return total


def fetch(url: str, dest: Path, md5: str, chunk: int = 1 << 20) -> None:
    """Download ``url`` to ``dest``, resuming ``dest.part``; verify its MD5 (module doc)."""
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    have = part.stat().st_size if part.exists() else 0
    if have:
        with open(part, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # the server ignored the range: start over
            have, digest = 0, hashlib.md5()
        expected = response.headers.get("Content-Length")
        with open(part, "ab" if have else "wb") as handle:
            try:
                for block in iter(lambda: response.read(chunk), b""):
                    handle.write(block)
                    digest.update(block)
            except http.client.IncompleteRead as err:  # what arrived is kept; the size check below reports it
                handle.write(err.partial)
                digest.update(err.partial)
    if expected is not None and part.stat().st_size != have + int(expected):
        raise OSError(f"{url}: connection closed after {part.stat().st_size} bytes; rerun to resume")
    if digest.hexdigest() != md5:
        aside = dest.with_name(f"{dest.name}.bad-{digest.hexdigest()}")
        os.replace(part, aside)
        raise ValueError(f"{url}: MD5 {digest.hexdigest()} is not the published {md5}; the file is kept at {aside}")
    os.replace(part, dest)


def _member_split(name: str, task: str, folders: list[str]) -> tuple[str, str] | None:
    """``(split folder, path inside it)`` of a tar member under ``.../<task>/<folder>/``, else None.

    S2EF train / val tarballs hold a split's frame files under one top folder
    (``s2ef_train_200K/s2ef_train_200K/``); they go to the single folder of that split."""
    parts = Path(name).parts
    if ".." in parts or Path(name).is_absolute():
        raise ValueError(f"tar member {name!r} points outside the extraction folder")
    for i in range(len(parts) - 2):
        folder = f"{parts[i + 1]}/{parts[i + 2]}"
        if parts[i] == task and folder in folders:
            return folder, "/".join(parts[i + 3 :])
    frame_file = parts[-1].endswith(FRAME_FILES) and not parts[-1].lower().startswith("readme")
    if task == "s2ef" and len(folders) == 1 and frame_file:
        return folders[0], parts[-1]
    return None


def extract(archive_path: Path, task: str, folders: list[str], out: Path) -> None:
    """Extract the members of ``folders`` into ``out/<task>/<folder>``, each split renamed into
    place only once all of its members are out."""
    staging = out / task / f".extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive_path) as tar:
            for member in tar:
                where = _member_split(member.name, task, folders) if member.isfile() else None
                if where is None or not where[1]:
                    continue
                target = staging / where[0] / where[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        for folder in folders:
            if not (staging / folder).is_dir():
                raise ValueError(f"{archive_path}: holds nothing for {task}/{folder}")
        for folder in folders:
            final = out / task / folder
            final.parent.mkdir(parents=True, exist_ok=True)
            for shard in final.glob("*.lmdb"):  # an incomplete earlier copy, maybe open for counting
                _close_reader(shard)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging / folder, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def complete(out: Path, task: str, folder: str, counts: dict[str, int]) -> bool:
    """Whether ``out/<task>/<folder>`` holds the published number of entries."""
    path = out / task / folder
    return path.is_dir() and count_entries(path) == counts[folder]


def download(
    task: str, split: str, out: Path, base_url: str = BASE_URL, dry_run: bool = False, keep: bool = False
) -> dict:
    """Fetch, verify, extract and count one split (module doc); returns what was done per folder."""
    archive, folders, counts = plan(task, split)
    url = base_url.rstrip("/") + "/" + archive.name
    todo = [f for f in folders if not complete(out, task, f, counts)]
    report = {"url": url, "md5": archive.md5, "skipped": [f for f in folders if f not in todo], "extracted": []}
    if dry_run or not todo:
        report["disk_needed_bytes"] = (archive.size + archive.unpacked) if todo else 0
        return report
    out.mkdir(parents=True, exist_ok=True)
    dest = out / archive.name
    if not dest.exists():
        fetch(url, dest, archive.md5)
    extract(dest, task, todo, out)
    for folder in todo:
        got = count_entries(out / task / folder)
        if got != counts[folder]:
            raise ValueError(f"{out / task / folder}: {got} entries, the published split has {counts[folder]}")
        report["extracted"].append(folder)
    if not keep:
        dest.unlink()
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("is2re", "s2ef"), required=True)
    p.add_argument("--split", required=True, help=f"is2re: {', '.join(IS2RE_SPLITS)}; s2ef: {', '.join(S2EF_SPLITS)}")
    p.add_argument("--out", type=Path, default=Path("data"), help="data root (README layout under it)")
    p.add_argument("--dry_run", action="store_true", help="list what would be fetched and the disk it needs")
    p.add_argument("--keep", action="store_true", help="keep the tarball after extraction")
    p.add_argument("--base_url", default=BASE_URL, help="mirror of the OC20 files (same file names)")
    args = p.parse_args(argv)
    try:
        report = download(args.task, args.split, args.out, args.base_url, args.dry_run, args.keep)
    except (ValueError, OSError) as err:
        p.error(str(err))
    for folder in report["skipped"]:
        print(f"{args.out / args.task / folder}: complete, skipped")
    if args.dry_run:
        print(
            f"would fetch {report['url']} (MD5 {report['md5']}); disk needed at most about "
            f"{report['disk_needed_bytes'] / _G:.1f} GiB (tarball + extracted, fairchem's rounded sizes)"
        )
    for folder in report["extracted"]:
        print(
            f"{args.out / args.task / folder}: extracted, {plan(args.task, args.split)[2][folder]} entries as published"
        )
    return report


if __name__ == "__main__":
    main()
