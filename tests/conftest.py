import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import make_esc50, make_folder_dataset  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("feature-cache")
    old = os.environ.get("AUDIO_CACHE_DIR")
    os.environ["AUDIO_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("AUDIO_CACHE_DIR", None)
    else:
        os.environ["AUDIO_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def esc50_flac(tmp_path_factory):
    return make_esc50(tmp_path_factory.mktemp("esc50_flac") / "ESC-50", fmt="flac", sr=16000)


@pytest.fixture(scope="session")
def esc50_wav(tmp_path_factory):
    return make_esc50(tmp_path_factory.mktemp("esc50_wav") / "ESC-50", fmt="wav", sr=44100, clips_per_class_fold=1)


@pytest.fixture(scope="session")
def folder_ds(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("folder") / "drums")
