"""data/download_esc50.py, tested offline against archives the test builds."""
import zipfile
from pathlib import Path

import pytest

import audio_utils as au
from scripts import load_script
from synth import make_esc50

dl = load_script("data/download_esc50.py")


def _zip_tree(src: Path, archive: Path, drop: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file() and (drop is None or p.name != drop):
                zf.write(p, "ESC-50-master/" + str(p.relative_to(src)))
    return archive


@pytest.fixture()
def official_zip(tmp_path):
    src = make_esc50(tmp_path / "src", fmt="wav", sr=44100, clips_per_class_fold=1, folds=(1, 2), seconds=5.0)
    return _zip_tree(src, tmp_path / "master.zip")


def test_download_from_url_verifies_and_unpacks(official_zip, tmp_path):
    dest = tmp_path / "data" / "ESC-50"
    url = official_zip.resolve().as_uri()                    # file:// exercises the download path
    assert dl.main(["--url", url, "--dest", str(dest), "--sha256", dl.sha256sum(official_zip)]) == 0
    assert (dest / "meta" / "esc50.csv").exists() and len(list((dest / "audio").glob("*.wav"))) == 6
    ds = au.esc50_dataset(dest, folds=[1, 2], cache_dir=tmp_path / "cache")
    assert ds.num_clips == 6


def test_local_archive_and_rejections(official_zip, tmp_path, capsys):
    dest = tmp_path / "ESC-50"
    assert dl.main(["--archive", str(official_zip), "--dest", str(dest)]) == 0
    assert dl.main(["--archive", str(official_zip), "--dest", str(tmp_path / "x"), "--sha256", "0" * 64]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert dl.main(["--archive", str(official_zip), "--dest", str(tmp_path / "x"), "--expect-clips", "2000"]) == 1
    broken = tmp_path / "broken.zip"
    broken.write_bytes(official_zip.read_bytes()[:1000])
    assert dl.main(["--archive", str(broken), "--dest", str(tmp_path / "y")]) == 1
    assert "not a zip" in capsys.readouterr().err
    src = tmp_path / "src"
    first = sorted((src / "audio").iterdir())[0].name
    missing = _zip_tree(src, tmp_path / "missing.zip", drop=first)
    assert dl.main(["--archive", str(missing), "--dest", str(tmp_path / "z")]) == 1
    assert "missing" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert dl.main(["--url", (tmp_path / "nothing.zip").as_uri(), "--dest", str(tmp_path / "w")]) == 1
