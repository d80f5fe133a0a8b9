"""mamba_ssm / Hugging Face checkpoint formats, for the converter and the tests.

* MambaLMHeadModelRef: a small PyTorch reference with mamba_ssm's module names
  and state_dict order (backbone.embedding, backbone.layers.{i}.norm,
  backbone.layers.{i}.mixer.{A_log, D, in_proj, conv1d, x_proj, dt_proj,
  out_proj}, backbone.norm_f, lm_head).  Written here from the published
  architecture; mamba_ssm itself is not needed.  Its forward is a readable
  sequential scan (slow), the numerical reference of the tests.
* read_safetensors / write_safetensors: the format written directly (an
  8-byte little-endian header length, a JSON header, the raw data).
* THIS_ORDER: this project's per-layer tensor order (mambabyte.h's
  MB_LAYER_TENSORS), which is not mamba_ssm's.
"""

import json
import math
import os
import struct

import numpy as np

LAYER_ORDER = ["norm.weight", "norm.bias", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias",
               "mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.A_log", "mixer.D",
               "mixer.out_proj.weight"]
MAGIC = 0x4D425954

_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2)}


def _bf16_to_f32(raw):
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype("<u2")


def read_safetensors(path):
    """{name: float32 array}, in file order; the data is memory-mapped and
    each F32 tensor is a view of it (no copy)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > os.path.getsize(path) - 8 or n > 100 << 20:
            raise ValueError(f"{path}: safetensors header length {n} does not fit the file")
        header = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = mm[b:end]
        if e["dtype"] == "BF16":
            a = _bf16_to_f32(raw.tobytes())
        elif e["dtype"] in _DTYPES:
            a = raw.view(_DTYPES[e["dtype"]][0]).astype(np.float32, copy=False)
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {e['dtype']}; supported: F32, BF16, F16")
        out[name] = a.reshape(e["shape"])
    return out


def write_safetensors(path, tensors, dtype="F32"):
    """tensors: {name: array} written in that order as F32, F16 or BF16."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        raw = (f32_to_bf16_bits(a) if dtype == "BF16" else a.astype("<f2") if dtype == "F16" else a.astype("<f4")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    _write_atomic(path, [struct.pack("<Q", len(h)), h] + blobs)


def _write_atomic(path, parts):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def infer_config(sd):
    """The config from the shapes of a state_dict with names stripped of
    "backbone." (this project's names)."""
    def shape(name):
        if name not in sd:
            raise ValueError(f"missing tensor {name}")
        return tuple(sd[name].shape)
    V, C = shape("embedding.weight")
    if V != 256:
        raise ValueError(f"embedding.weight is ({V}, {C}); a byte model has 256 rows")
    n_layer = 0
    while f"layers.{n_layer}.mixer.in_proj.weight" in sd:
        n_layer += 1
    if n_layer == 0:
        raise ValueError("missing tensor layers.0.mixer.in_proj.weight")
    di2, _ = shape("layers.0.mixer.in_proj.weight")
    di, S = shape("layers.0.mixer.A_log")
    K = shape("layers.0.mixer.conv1d.weight")[2]
    R = shape("layers.0.mixer.dt_proj.weight")[1]
    rms = "layers.0.norm.bias" not in sd
    untied = "lm_head.weight" in sd and not np.array_equal(np.asarray(sd["lm_head.weight"]), np.asarray(sd["embedding.weight"]))
    return dict(vocab_size=256, d_model=C, n_layer=n_layer, d_state=S, d_conv=K, expand=di2 // (2 * C), dt_rank=R,
                norm=1 if rms else 0, untied_head=1 if untied else 0)


def tensor_table(c):
    """[(name, shape)] in this project's checkpoint order for config c."""
    C, Di, S, K, R = c["d_model"], c["d_model"] * c["expand"], c["d_state"], c["d_conv"], c["dt_rank"]
    shapes = {"norm.weight": (C,), "norm.bias": (C,), "mixer.in_proj.weight": (2 * Di, C), "mixer.conv1d.weight": (Di, 1, K),
              "mixer.conv1d.bias": (Di,), "mixer.x_proj.weight": (R + 2 * S, Di), "mixer.dt_proj.weight": (Di, R),
              "mixer.dt_proj.bias": (Di,), "mixer.A_log": (Di, S), "mixer.D": (Di,), "mixer.out_proj.weight": (C, Di)}
    t = [("embedding.weight", (256, C))]
    for i in range(c["n_layer"]):
        t += [(f"layers.{i}.{n}", shapes[n]) for n in LAYER_ORDER if not (c["norm"] and n == "norm.bias")]
    t += [("norm_f.weight", (C,))] + ([] if c["norm"] else [("norm_f.bias", (C,))])
    return t + ([("lm_head.weight", (256, C))] if c["untied_head"] else [])


def write_mambabyte(path, sd, c):
    """This project's checkpoint: the 256-int32 header, then every tensor
    in its order (looked up by name: whatever order sd is in)."""
    h = np.zeros(256, "<i4")
    h[:12] = [MAGIC, 1, 256, c["d_model"], c["n_layer"], c["d_state"], c["d_conv"], c["expand"], c["dt_rank"], c["norm"],
              0 if c["untied_head"] else 1, 0]
    _write_atomic(path, [h.tobytes()] + [np.ascontiguousarray(sd[n], "<f4").tobytes() for n, _ in tensor_table(c)])


def read_mambabyte(path):
    """({name: float32 array} memory-mapped, config) of this project's checkpoint."""
    h = np.fromfile(path, "<i4", 256)
    if h[0] != MAGIC or h[1] != 1:
        raise ValueError(f"{path}: not a mambabyte checkpoint")
    c = dict(vocab_size=int(h[2]), d_model=int(h[3]), n_layer=int(h[4]), d_state=int(h[5]), d_conv=int(h[6]),
             expand=int(h[7]), dt_rank=int(h[8]), norm=int(h[9]), untied_head=0 if h[10] else 1)
    mm = np.memmap(path, "<f4", mode="r", offset=1024)
    sd, off = {}, 0
    for name, shp in tensor_table(c):
        n = int(np.prod(shp))
        sd[name] = mm[off:off + n].reshape(shp)
        off += n
    return sd, c


def mamba_names(sd):
    """This project's names -> mamba_ssm's, in mamba_ssm's state_dict order
    (A_log and D first in each mixer), lm_head.weight always present."""
    c = infer_config(sd)
    out = {"backbone.embedding.weight": sd["embedding.weight"]}
    first = ["mixer.A_log", "mixer.D"]
    for i in range(c["n_layer"]):
        for n in ["norm.weight", "norm.bias"] + first + [n for n in LAYER_ORDER[2:] if n not in first]:
            if f"layers.{i}.{n}" in sd:
                out[f"backbone.layers.{i}.{n}"] = sd[f"layers.{i}.{n}"]
    for n in ["norm_f.weight", "norm_f.bias"]:
        if n in sd:
            out["backbone." + n] = sd[n]
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["embedding.weight"])
    return out


# ---------------------------------------------------------- the reference
try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError:  # the format helpers above need only numpy
    torch = None

if torch is not None:
    class RMSNorm(nn.Module):
        def __init__(self, d, eps=1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class MambaMixer(nn.Module):
        def __init__(self, d_model, d_state, d_conv, expand, dt_rank):
            super().__init__()
            di = expand * d_model
            self.di, self.ds, self.r = di, d_state, dt_rank
            # registered first, as mamba_ssm's state_dict lists them
            self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
            self.D = nn.Parameter(torch.ones(di))
            self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
            self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1)
            self.x_proj = nn.Linear(di, dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(dt_rank, di)
            self.out_proj = nn.Linear(di, d_model, bias=False)

        def forward(self, x):
            T = x.shape[1]
            xs, z = self.in_proj(x).split(self.di, dim=-1)
            u = F.silu(self.conv1d(xs.transpose(1, 2))[..., :T].transpose(1, 2))
            dt_low, Bm, Cm = self.x_proj(u).split([self.r, self.ds, self.ds], dim=-1)
            dt = F.softplus(self.dt_proj(dt_low))
            A = -torch.exp(self.A_log)
            h = torch.zeros(x.shape[0], self.di, self.ds, dtype=x.dtype)
            ys = []
            for t in range(T):
                dtt = dt[:, t].unsqueeze(-1)
                h = torch.exp(dtt * A) * h + dtt * Bm[:, t].unsqueeze(1) * u[:, t].unsqueeze(-1)
                ys.append((h * Cm[:, t].unsqueeze(1)).sum(-1))
            return self.out_proj((torch.stack(ys, 1) + u * self.D) * F.silu(z))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.mixer = MambaMixer(c["d_model"], c["d_state"], c["d_conv"], c["expand"], c["dt_rank"])
            self.norm = RMSNorm(c["d_model"]) if c["norm"] else nn.LayerNorm(c["d_model"], eps=1e-5)

        def forward(self, x):
            return x + self.mixer(self.norm(x))

    class Backbone(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.embedding = nn.Embedding(256, c["d_model"])
            self.layers = nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
            self.norm_f = RMSNorm(c["d_model"]) if c["norm"] else nn.LayerNorm(c["d_model"], eps=1e-5)

    class MambaLMHeadModelRef(nn.Module):
        """forward(idx (B, T) long) -> logits (B, T, 256).  Tied: lm_head
        shares the embedding's weight (and the state_dict lists both)."""

        def __init__(self, c):
            super().__init__()
            self.config = dict(c)
            self.backbone = Backbone(c)
            self.lm_head = nn.Linear(c["d_model"], 256, bias=False)
            if not c["untied_head"]:
                self.lm_head.weight = self.backbone.embedding.weight

        def forward(self, idx):
            h = self.backbone.embedding(idx)
            for layer in self.backbone.layers:
                h = layer(h)
            return self.lm_head(self.backbone.norm_f(h))


def default_dt_rank(d_model):
    return math.ceil(d_model / 16)
