"""mbfix - writer and reader of the MBFX fixture container (little-endian).

Layout:
    uint32 magic 0x5846424D ('M','B','F','X' on disk), uint32 version 1,
    uint32 count, then `count` entries, each:
        uint32 name_len, name bytes (ASCII, no NUL),
        uint32 dtype (0 = float32, 1 = int32, 2 = float64),
        uint32 ndim, uint32 dims[ndim],
        data in C order.

Entries are written in the order given (an ordered list of (name, array)),
so the same inputs always produce the same bytes.
"""

import struct

import numpy as np

MAGIC = 0x5846424D
VERSION = 1

_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<i4"), 2: np.dtype("<f8")}
_CODES = {np.dtype("<f4"): 0, np.dtype("<i4"): 1, np.dtype("<f8"): 2}


def _as_array(value):
    """Accept numpy arrays or torch tensors (no torch import needed here)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    dt = arr.dtype.newbyteorder("<")
    if dt not in _CODES:
        raise TypeError("unsupported dtype %s (use float32, int32 or float64)" % arr.dtype)
    return np.ascontiguousarray(arr, dtype=dt)


def dumps(entries):
    """entries: iterable of (name, array). Returns the file bytes."""
    entries = list(entries)
    seen = set()
    out = [struct.pack("<III", MAGIC, VERSION, len(entries))]
    for name, value in entries:
        if name in seen:
            raise ValueError("duplicate entry name %r" % name)
        seen.add(name)
        raw = name.encode("ascii")
        if b"\0" in raw or not raw:
            raise ValueError("bad entry name %r" % name)
        arr = _as_array(value)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        out.append(struct.pack("<I", len(raw)))
        out.append(raw)
        out.append(struct.pack("<II", _CODES[arr.dtype], arr.ndim))
        out.append(struct.pack("<%dI" % arr.ndim, *arr.shape))
        out.append(arr.tobytes(order="C"))
    return b"".join(out)


def write(path, entries):
    data = dumps(entries)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def loads(data):
    """Parse MBFX bytes into a dict name -> numpy array (insertion order kept)."""
    off = 0

    def take(fmt):
        nonlocal off
        vals = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return vals

    magic, version, count = take("<III")
    if magic != MAGIC:
        raise ValueError("bad magic 0x%08X" % magic)
    if version != VERSION:
        raise ValueError("unsupported version %d" % version)
    result = {}
    for _ in range(count):
        (name_len,) = take("<I")
        name = data[off:off + name_len].decode("ascii")
        off += name_len
        dtype_code, ndim = take("<II")
        dims = take("<%dI" % ndim) if ndim else ()
        dt = _DTYPES[dtype_code]
        n = int(np.prod(dims, dtype=np.int64)) if ndim else 1
        nbytes = n * dt.itemsize
        if off + nbytes > len(data):
            raise ValueError("entry %r runs past the end of the file" % name)
        arr = np.frombuffer(data, dtype=dt, count=n, offset=off).reshape(dims).copy()
        off += nbytes
        result[name] = arr
    if off != len(data):
        raise ValueError("%d trailing bytes" % (len(data) - off))
    return result


def read(path):
    with open(path, "rb") as f:
        return loads(f.read())


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        d = read(p)
        print("%s: %d entries" % (p, len(d)))
        for k, v in d.items():
            print("  %-48s %-8s %s" % (k, v.dtype, tuple(v.shape)))
