"""Shared fixtures of the Python tests (run by `make test-python`)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

import mambabyte  # noqa: E402

SAMPLE = ROOT / "data" / "sample.txt"
MULTIBYTE_UNIT = "caf\u00e9 au lait \u2013 Nara \u5948\u826f; "  # é, –, 奈


def tiny_options(**kw):
    o = dict(d_model=32, n_layer=2, d_state=8, batch=4, ctx=64, steps=60, lr=1e-2, verbose=False)
    o.update(kw)
    return o


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def sample_text():
    return SAMPLE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small model trained on the sample text (and saved), for the tests
    that need a model that predicts something."""
    path = tmp_path_factory.mktemp("trained") / "model.bin"
    m = mambabyte.train(SAMPLE.read_bytes(), out=str(path), **tiny_options(steps=120, lr=5e-3))
    return m, path


@pytest.fixture(scope="session")
def multibyte_model():
    """Overfit on text full of é – 奈: it predicts them."""
    text = (MULTIBYTE_UNIT * 120).encode("utf-8")
    return mambabyte.train(text, seed=9, **tiny_options(steps=90, warmup=8)), text


def run_cli(*args, **kw):
    return subprocess.run([str(ROOT / "mambabyte")] + [str(a) for a in args], capture_output=True, text=True,
                          cwd=str(ROOT), **kw)


def python_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env
