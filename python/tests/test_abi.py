"""The ctypes mirrors in mambabyte._lib have the C structs' exact layout."""
import ctypes
import os
import subprocess

import pytest

from conftest import ROOT
from mambabyte import _lib


def c_layout():
    exe = os.environ.get("MB_ABI_SIZES") or str(ROOT / "build" / "abi_sizes")
    if not os.path.isabs(exe):
        exe = str(ROOT / exe)
    if not os.path.exists(exe):
        subprocess.run(["make", "-C", str(ROOT), "build/abi_sizes"], check=True, capture_output=True)
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    structs, extra = {}, {}
    for line in out.splitlines():
        parts = line.split()
        if ":" in line or parts[0].startswith("mb_"):
            structs[parts[0]] = (int(parts[1]), {f.split(":")[0]: int(f.split(":")[1]) for f in parts[2:]})
        else:
            extra[parts[0]] = int(parts[1])
    return structs, extra


STRUCTS, EXTRA = c_layout()


@pytest.mark.parametrize("name", sorted(_lib.STRUCTS))
def test_struct_layout_matches_c(name):
    assert name in STRUCTS, "build/abi_sizes does not print %s" % name
    size, offsets = STRUCTS[name]
    py = _lib.STRUCTS[name]
    assert ctypes.sizeof(py) == size, "%s: ctypes size %d, C size %d" % (name, ctypes.sizeof(py), size)
    py_fields = [f[0] for f in py._fields_]
    assert py_fields == list(offsets), "%s: fields %s vs C %s" % (name, py_fields, list(offsets))
    for f, off in offsets.items():
        assert getattr(py, f).offset == off, "%s.%s: ctypes offset %d, C %d" % (name, f, getattr(py, f).offset, off)


def test_every_mirror_is_checked():
    assert set(STRUCTS) == set(_lib.STRUCTS)


def test_constants():
    assert EXTRA["enum"] == ctypes.sizeof(ctypes.c_int)
    assert EXTRA["MB_FIELD_COUNT"] == _lib.FIELD_COUNT
    assert _lib.lib.mb_train_field_count() == _lib.FIELD_COUNT and not _lib.lib.mb_train_field_desc(_lib.FIELD_COUNT)
    settings = [d.key.decode() for d in _lib._train_fields() if d.offset >= 0]
    assert settings == list(STRUCTS["mb_train_settings"][1]), "the table's settings fields are mb_train_settings' in order"


def test_cpu_level_pick(monkeypatch):
    """An installed package loads the library built for the highest x86-64 level the CPU's flags allow."""
    v3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm", "sse4_2"}
    v4 = v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    assert _lib.cpu_levels(set()) == [] and _lib.cpu_levels(v3 - {"fma"}) == []
    assert _lib.cpu_levels(v3) == ["x86-64-v3"]
    assert _lib.cpu_levels(v4) == ["x86-64-v4", "x86-64-v3"]
    assert _lib.cpu_levels(v4 - {"avx2"}) == []  # v4 without v3 is not v4
    monkeypatch.delenv("MAMBABYTE_LIBRARY", raising=False)
    monkeypatch.setattr(_lib, "_cpu_flags", lambda: v4)
    dirs = [os.path.basename(os.path.dirname(p)) for p in _lib._candidates()]
    assert dirs[:4] == ["x86-64-v4"] * 2 + ["x86-64-v3"] * 2 and dirs[4] == "mambabyte"
    monkeypatch.setattr(_lib, "_cpu_flags", lambda: set())
    assert os.path.basename(os.path.dirname(_lib._candidates()[0])) == "mambabyte"
