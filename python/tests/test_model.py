"""Model: create/load/save, state_dict round trips (numpy and PyTorch), bad input."""
import subprocess
import sys

import numpy as np
import pytest

import mambabyte
from conftest import ROOT, python_env

SMALL = dict(d_model=32, n_layer=2, d_state=8)
X = np.frombuffer(b"The harbour froze in 1892. Caf\xc3\xa9 \xe2\x80\x93 \xe5\xa5\x88", np.uint8).reshape(1, -1)


def test_create_config_and_params():
    m = mambabyte.Model.create(SMALL, seed=3)
    c = m.config
    assert c == {"vocab_size": 256, "d_model": 32, "n_layer": 2, "d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 2,
                 "norm": "layernorm", "untied_head": False}
    sd = m.state_dict()
    assert sum(v.size for v in sd.values()) == m.num_params
    assert list(sd)[:3] == ["embedding.weight", "layers.0.norm.weight", "layers.0.norm.bias"]
    assert sd["layers.1.mixer.conv1d.weight"].shape == (64, 1, 4)
    assert sd["layers.0.mixer.x_proj.weight"].shape == (2 + 16, 64)
    assert mambabyte.Model.create().num_params == 1057152  # seed 000's model
    # same seed, same weights
    a, b = mambabyte.Model.create(SMALL, seed=3).state_dict(), sd
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_state_dict_round_trip_bit_identical(tmp_path):
    m = mambabyte.Model.create(SMALL, seed=5)
    sd = m.state_dict()
    m2 = mambabyte.Model.from_state_dict(sd)  # config inferred from the shapes
    assert m2.config == m.config
    assert np.array_equal(m.forward(X), m2.forward(X))
    # through a checkpoint: C -> file -> C -> numpy
    m2.save(tmp_path / "m.bin")
    m3 = mambabyte.Model.load(tmp_path / "m.bin")
    assert all(np.array_equal(v, m3.state_dict()[k]) for k, v in sd.items())
    assert np.array_equal(m.forward(X), m3.forward(X))
    # a copy: changing it does not change the model
    sd["embedding.weight"][:] = 0
    assert not np.array_equal(m.state_dict()["embedding.weight"], sd["embedding.weight"])


def test_from_state_dict_errors():
    sd = mambabyte.Model.create(SMALL, seed=5).state_dict()
    bad = dict(sd)
    del bad["norm_f.bias"]
    with pytest.raises(KeyError, match="norm_f.bias"):
        mambabyte.Model.from_state_dict(bad)
    bad = dict(sd, **{"layers.0.mixer.D": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        mambabyte.Model.from_state_dict(bad)
    bad = dict(sd, extra=np.zeros(1))
    with pytest.raises(KeyError, match="unexpected"):
        mambabyte.Model.from_state_dict(bad)
    bad = {k: v.copy() for k, v in sd.items()}
    bad["layers.1.mixer.A_log"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mambabyte.Model.from_state_dict(bad)
    with pytest.raises(mambabyte.MambaByteError, match="d_state"):
        mambabyte.Model.create(dict(d_state=0))
    with pytest.raises(TypeError, match="unknown config"):
        mambabyte.Model.create(dict(width=3))


def test_corrupt_checkpoint(tmp_path):
    m = mambabyte.Model.create(SMALL, seed=5)
    m.save(tmp_path / "ok.bin")
    data = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 2048)
    for name in ("short.bin", "junk.bin", "missing.bin"):
        with pytest.raises(mambabyte.MambaByteError) as e:
            mambabyte.Model.load(tmp_path / name)
        assert name in str(e.value) and e.value.status_string and e.value.detail
    with pytest.raises(mambabyte.MambaByteError):
        m.save(tmp_path / "no_such_dir" / "m.bin")


def test_missing_library_is_an_import_error(tmp_path):
    code = "import mambabyte"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=python_env(MAMBABYTE_LIBRARY=str(tmp_path / "libmambabyte.so")))
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "make lib" in r.stderr


def test_bad_forward_input():
    m = mambabyte.Model.create(SMALL)
    with pytest.raises(ValueError):
        m.forward(np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        m.forward(np.array([[1, 300]]))
