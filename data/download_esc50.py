#!/usr/bin/env python
"""Download, verify and unpack ESC-50 into ``data/ESC-50``.

    python data/download_esc50.py                       # official archive from GitHub
    python data/download_esc50.py --archive master.zip  # an archive you already have
    python data/download_esc50.py --sha256 HEX          # also check the archive's checksum

The archive (https://github.com/karolpiczak/ESC-50/archive/master.zip, about 600 MB) holds
``ESC-50-master/meta/esc50.csv`` and ``ESC-50-master/audio/*.wav``. It is downloaded to a temporary
file, checked (zip CRCs, meta present, every clip listed in the meta present and readable,
optional SHA-256), and unpacked to a temporary directory that is renamed into place, so an
interrupted run never leaves a half-written dataset.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

OFFICIAL_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
DEFAULT_DEST = Path(__file__).resolve().parent / "ESC-50"


class DownloadError(RuntimeError):
    pass


def fetch(url: str, target: Path, progress: bool = True) -> None:
    """Download ``url`` (http(s) or file://) to ``target``."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc="ESC-50")
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except OSError as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_archive(archive: Path, sha256: str | None = None, expect_clips: int | None = None) -> tuple[str, list[str]]:
    """Check an ESC-50 zip; return (top-level prefix, clip names)."""
    if sha256 and sha256sum(archive) != sha256.lower():
        raise DownloadError(f"{archive}: SHA-256 mismatch")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DownloadError(f"{archive}: not a zip archive (corrupt or incomplete download)") from None
    with zf:
        bad = zf.testzip()
        if bad is not None:
            raise DownloadError(f"{archive}: corrupt member {bad}")
        metas = [n for n in zf.namelist() if n.endswith("meta/esc50.csv")]
        if not metas:
            raise DownloadError(f"{archive}: no meta/esc50.csv inside (not an ESC-50 archive)")
        prefix = metas[0][: -len("meta/esc50.csv")]
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open(metas[0]), encoding="utf-8")))
        names = [r["filename"] for r in rows]
        members = set(zf.namelist())
        missing = [n for n in names if f"{prefix}audio/{n}" not in members]
        if missing:
            raise DownloadError(f"{archive}: {len(missing)} clip(s) listed in the meta are missing, e.g. {missing[0]}")
        if expect_clips is not None and len(names) != expect_clips:
            raise DownloadError(f"{archive}: {len(names)} clips listed, expected {expect_clips}")
        for n in names:
            with zf.open(f"{prefix}audio/{n}") as fh:
                if fh.read(4) != b"RIFF":
                    raise DownloadError(f"{archive}: {n} is not a WAV file")
    return prefix, names


def install(archive: Path, dest: Path, sha256: str | None = None, expect_clips: int | None = None) -> Path:
    prefix, names = verify_archive(archive, sha256, expect_clips)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".esc50-") as tmp:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not member.startswith(prefix) or member.endswith("/"):
                    continue
                rel = member[len(prefix):]
                if not (rel.startswith("meta/") or rel.startswith("audio/") or rel in ("LICENSE", "README.md")):
                    continue
                target = Path(tmp) / "ESC-50" / rel
                if ".." in Path(rel).parts:
                    raise DownloadError(f"{archive}: unsafe path {member}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        if dest.exists():
            shutil.rmtree(dest)
        (Path(tmp) / "ESC-50").rename(dest)
    print(f"ESC-50 ready: {dest} ({len(names)} clips)")
    return dest


def download(url: str = OFFICIAL_URL, dest: Path = DEFAULT_DEST, archive: Path | None = None,
             sha256: str | None = None, expect_clips: int | None = None, keep: Path | None = None,
             progress: bool = True) -> Path:
    if archive is not None:
        if not archive.exists():
            raise DownloadError(f"{archive}: archive not found")
        return install(archive, dest, sha256, expect_clips)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".esc50-dl-") as tmp:
        zpath = Path(tmp) / "master.zip"
        fetch(url, zpath, progress)
        result = install(zpath, dest, sha256, expect_clips)
        if keep is not None:
            shutil.move(str(zpath), keep)
        return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=OFFICIAL_URL)
    p.add_argument("--archive", type=Path, help="use this local zip instead of downloading")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.add_argument("--expect-clips", type=int, default=None,
                   help="number of clips the meta must list (2000 for the official release)")
    p.add_argument("--keep-archive", type=Path, help="also keep the downloaded zip here")
    args = p.parse_args(argv)
    expect = args.expect_clips if args.expect_clips is not None else (2000 if args.archive is None and args.url == OFFICIAL_URL else None)
    try:
        download(args.url, args.dest, args.archive, args.sha256, expect, args.keep_archive)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
