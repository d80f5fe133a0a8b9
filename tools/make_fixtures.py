"""Numerics fixtures: softmax / log_softmax / logsumexp / cross-entropy.

Writes tests/fixtures/numerics.mbfx (see tests/fixtures/README.md).
Reference values are PyTorch's F.softmax, F.log_softmax, torch.logsumexp and
F.cross_entropy (class-index targets, ignore_index -100), computed in float64
from the float32 inputs and stored as float32.  Deterministic: fixed seeds,
one thread, no timestamps.

Run with the Debian PyTorch:  /usr/bin/python3 tools/make_fixtures.py
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mbfix  # noqa: E402

IGNORE = -100
SMOOTH = 0.1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "numerics.mbfx")


def normal(seed, rows, V, scale=1.0, shift=0.0):
    rs = np.random.RandomState(seed)
    x = rs.standard_normal((rows, V)) * scale + shift
    t = rs.randint(0, V, size=rows)
    return x.astype(np.float32), t.astype(np.int32)


def with_ignored(t, idx):
    t = t.copy()
    t[list(idx)] = IGNORE
    return t


def with_neg_inf(seed, x, t, frac):
    """Set about `frac` of the entries to -inf, never at a target, never a
    whole row; the last row keeps only its target finite."""
    rs = np.random.RandomState(seed)
    x = x.copy()
    rows, V = x.shape
    mask = rs.random_sample((rows, V)) < frac
    for r in range(rows):
        if t[r] != IGNORE:
            mask[r, t[r]] = False
        if mask[r].all():
            mask[r, rs.randint(0, V)] = False
    if t[-1] != IGNORE:
        mask[-1, :] = True
        mask[-1, t[-1]] = False
    x[mask] = -np.inf
    return x


def build_cases():
    cases = []
    # plain random normal rows of several sizes
    cases.append(normal(1000, 1, 1))                       # V = 1
    cases.append(normal(1001, 3, 2))
    x, t = normal(1002, 17, 5)
    cases.append((x, with_ignored(t, [2, 9, 16])))          # some ignored rows
    cases.append(normal(1003, 3, 256))
    x, t = normal(1004, 3, 1000)
    cases.append((x, with_ignored(t, [1])))
    # scaled / shifted rows
    cases.append(normal(1005, 17, 256, scale=100.0))
    cases.append(normal(1006, 3, 5, scale=1e4))
    cases.append(normal(1007, 3, 256, shift=1e4))
    x, t = normal(1008, 17, 5, shift=-1e4)
    cases.append((x, with_ignored(t, [0, 5])))
    # rows with some -inf entries (never at the target, never a whole row)
    x, t = normal(1009, 17, 256)
    t = with_ignored(t, [4, 11])
    cases.append((with_neg_inf(2009, x, t, 0.2), t))
    x, t = normal(1010, 3, 5)
    cases.append((with_neg_inf(2010, x, t, 0.4), t))
    # seed 003's adversarial rows
    cases.append((np.array([[1, 92, 3, 0, 2], [-100, -200, -300, -400, -500]], np.float32),
                  np.array([3, 4], np.int32)))
    cases.append((np.array([[1000, 1001, 1002], [-1000, -999, -998]], np.float32),
                  np.array([0, 2], np.int32)))
    # many ignored rows, one kept
    x, t = normal(1013, 17, 256, scale=3.0)
    cases.append((x, with_ignored(t, [i for i in range(17) if i != 7])))
    return cases


def reference(x32, t32):
    x = torch.from_numpy(x32).double()
    t = torch.from_numpy(t32).long()
    rows, V = x.shape
    assert x.dtype == torch.float64
    assert (t != IGNORE).any(), "never all rows ignored"
    for r in range(rows):
        assert not torch.isneginf(x[r]).all(), "no all -inf row"
        if t[r] != IGNORE:
            assert 0 <= t[r] < V
            assert torch.isfinite(x[r, t[r]]), "no -inf at a target"

    out = {}
    out["softmax"] = F.softmax(x, -1)
    out["log_softmax"] = F.log_softmax(x, -1)
    out["logsumexp"] = torch.logsumexp(x, -1)
    out["ce_mean"] = F.cross_entropy(x, t, ignore_index=IGNORE, reduction="mean").reshape(1)
    out["ce_sum"] = F.cross_entropy(x, t, ignore_index=IGNORE, reduction="sum").reshape(1)
    out["ce_none"] = F.cross_entropy(x, t, ignore_index=IGNORE, reduction="none")
    out["ce_smooth_mean"] = F.cross_entropy(x, t, ignore_index=IGNORE, reduction="mean",
                                            label_smoothing=SMOOTH).reshape(1)
    out["ce_smooth_none"] = F.cross_entropy(x, t, ignore_index=IGNORE, reduction="none",
                                            label_smoothing=SMOOTH)
    for key, ls in (("dce_mean", 0.0), ("dce_smooth_mean", SMOOTH)):
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(xg, t, ignore_index=IGNORE, reduction="mean", label_smoothing=ls)
        (g,) = torch.autograd.grad(loss, xg)
        out[key] = g

    # sanity: ignored rows are zero under NONE and in the gradients
    ign = t == IGNORE
    assert (out["ce_none"][ign] == 0).all() and (out["dce_mean"][ign] == 0).all()
    assert (out["dce_smooth_mean"][ign] == 0).all()
    assert torch.isfinite(out["ce_mean"]).all() and torch.isfinite(out["dce_mean"]).all()
    assert torch.isfinite(out["dce_smooth_mean"]).all()
    # cross-check mean CE against log_softmax
    keep = ~ign
    nll = -out["log_softmax"][keep, t[keep]]
    assert torch.allclose(nll.mean(), out["ce_mean"][0], rtol=1e-12, atol=0)
    return out


ORDER = ["softmax", "log_softmax", "logsumexp", "ce_mean", "ce_sum", "ce_none",
         "ce_smooth_mean", "ce_smooth_none", "dce_mean", "dce_smooth_mean"]


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = build_cases()
    entries = [("ncases", np.array([len(cases)], np.int32))]
    for k, (x, t) in enumerate(cases):
        assert x.dtype == np.float32 and t.dtype == np.int32 and x.ndim == 2
        ref = reference(x, t)
        entries.append(("case%d.x" % k, x))
        entries.append(("case%d.targets" % k, t))
        for name in ORDER:
            v = ref[name]
            assert v.dtype == torch.float64
            entries.append(("case%d.%s" % (k, name), v.numpy().astype(np.float32)))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    n = mbfix.write(OUT, entries)
    back = mbfix.read(OUT)
    assert list(back) == [e[0] for e in entries]
    assert n < 1 << 20
    print("wrote %s (%d bytes, %d cases)" % (os.path.relpath(OUT, ROOT), n, len(cases)))


if __name__ == "__main__":
    main()
