"""PyTorch reference for the byte-level Mamba model: checkpoint + expected values.

Writes
    tests/fixtures/model_tiny.bin   a checkpoint in our format (tiny config)
    tests/fixtures/model_tiny.mbfx  logits, loss, gradients and a 20-step
                                    AdamW trajectory for that checkpoint
(see tests/fixtures/README.md).  The weights are drawn in float32 from fixed
seeds; every reference value is computed in float64 from those float32
weights (the selective scan is a plain sequential loop over time) and stored
as float32.  Deterministic: fixed seeds, one thread, no timestamps.

Run with the Debian PyTorch:  /usr/bin/python3 tools/torch_reference.py
"""

import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mbfix  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXDIR = os.path.join(ROOT, "tests", "fixtures")
CKPT_OUT = os.path.join(FIXDIR, "model_tiny.bin")
MBFX_OUT = os.path.join(FIXDIR, "model_tiny.mbfx")

CKPT_MAGIC = 0x4D425954
LN_EPS = 1e-5

TINY = dict(vocab_size=256, d_model=32, n_layer=2, d_state=8, d_conv=4, expand=2, dt_rank=2)

# Trajectory hyper-parameters.
LR_MAX, BETA1, BETA2, ADAM_EPS, WD, CLIP, WARMUP, TOTAL = 3e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, 1, 20

TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it naps under the old oak tree. "
    "Bytes are all we need: no tokenizer, no vocabulary file, just 256 symbols and a state "
    "that remembers what came before. A caf\u00e9 in Z\u00fcrich serves cr\u00e8me br\u00fbl\u00e9e "
    "at 7:45 p.m.; prices rose 12% in 2023! Selective state spaces decide, token by token, "
    "what to keep and what to forget. "
).encode("utf-8")


# ----------------------------------------------------------------- params
def param_shapes(cfg):
    """(name, shape) in checkpoint order (= PyTorch state_dict names)."""
    dm, di = cfg["d_model"], cfg["expand"] * cfg["d_model"]
    ds, dc, r = cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    out = [("embedding.weight", (cfg["vocab_size"], dm))]
    for i in range(cfg["n_layer"]):
        p = "layers.%d." % i
        out += [
            (p + "norm.weight", (dm,)),
            (p + "norm.bias", (dm,)),
            (p + "mixer.in_proj.weight", (2 * di, dm)),
            (p + "mixer.conv1d.weight", (di, 1, dc)),
            (p + "mixer.conv1d.bias", (di,)),
            (p + "mixer.x_proj.weight", (r + 2 * ds, di)),
            (p + "mixer.dt_proj.weight", (di, r)),
            (p + "mixer.dt_proj.bias", (di,)),
            (p + "mixer.A_log", (di, ds)),
            (p + "mixer.D", (di,)),
            (p + "mixer.out_proj.weight", (dm, di)),
        ]
    out += [("norm_f.weight", (dm,)), ("norm_f.bias", (dm,))]
    return out


def inverse_softplus(y):
    return y + np.log(-np.expm1(-y))


def init_params(cfg, seed):
    """Float32 weights from a fixed seed: dict name -> np.float32 array."""
    rs = np.random.RandomState(seed)
    di = cfg["expand"] * cfg["d_model"]
    ds = cfg["d_state"]
    out = {}
    for name, shape in param_shapes(cfg):
        leaf = name.split(".", 2)[-1] if name.startswith("layers.") else name
        if name == "embedding.weight":
            w = rs.standard_normal(shape) * 0.5
        elif leaf.endswith("norm.weight") or name == "norm_f.weight":
            w = 1.0 + rs.standard_normal(shape) * 0.1
        elif leaf.endswith("norm.bias") or name == "norm_f.bias":
            w = rs.standard_normal(shape) * 0.1
        elif leaf == "mixer.conv1d.weight":
            w = rs.standard_normal(shape) * 0.5
        elif leaf == "mixer.conv1d.bias":
            w = rs.standard_normal(shape) * 0.2
        elif leaf == "mixer.dt_proj.bias":
            # softplus(bias) log-uniform in [1e-3, 0.5] ...
            dt = np.exp(rs.uniform(math.log(1e-3), math.log(0.5), size=shape))
            # ... and a few large channels (softplus ~ 2..5, so dt*A ~ -40)
            big = rs.choice(di, size=max(1, di // 16), replace=False)
            dt[big] = rs.uniform(2.0, 5.0, size=big.shape)
            dt[big[0]] = 5.0
            w = inverse_softplus(dt)
        elif leaf == "mixer.A_log":
            w = np.log(np.tile(np.arange(1, ds + 1, dtype=np.float64), (di, 1)))
            w = w + rs.standard_normal(shape) * 0.1
        elif leaf == "mixer.D":
            w = 1.0 + rs.standard_normal(shape) * 0.3
        else:  # in_proj, x_proj, dt_proj, out_proj weights: N(0, 1/sqrt(fan_in))
            w = rs.standard_normal(shape) / math.sqrt(shape[1])
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def to_torch(params32, dtype):
    # clone: from_numpy shares memory, and the optimizer must not write into params32
    return {k: torch.from_numpy(v).to(dtype).clone().requires_grad_(True) for k, v in params32.items()}


# ------------------------------------------------------------------ model
def selective_scan(u, dt, A, Bm, Cm, D):
    """Plain sequential Mamba recurrence. u, dt (B,T,Di); A (Di,N);
    Bm, Cm (B,T,N); D (Di). Returns y (B,T,Di)."""
    Bsz, T, Di = u.shape
    N = A.shape[1]
    dA = torch.exp(dt.unsqueeze(-1) * A)                        # (B,T,Di,N)
    dBu = dt.unsqueeze(-1) * Bm.unsqueeze(2) * u.unsqueeze(-1)  # (B,T,Di,N)
    h = torch.zeros(Bsz, Di, N, dtype=u.dtype)
    ys = []
    for t in range(T):
        h = dA[:, t] * h + dBu[:, t]
        ys.append((h * Cm[:, t].unsqueeze(1)).sum(-1))
    y = torch.stack(ys, 1)
    return y + u * D


def mixer(P, p, x, cfg):
    di, ds, dc, r = cfg["expand"] * cfg["d_model"], cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    T = x.shape[1]
    xz = x @ P[p + "in_proj.weight"].t()
    xs, z = xz[..., :di], xz[..., di:]
    u = F.conv1d(xs.transpose(1, 2), P[p + "conv1d.weight"], P[p + "conv1d.bias"],
                 padding=dc - 1, groups=di)[..., :T].transpose(1, 2)
    u = F.silu(u)
    x_dbl = u @ P[p + "x_proj.weight"].t()
    dt_low, Bm, Cm = x_dbl[..., :r], x_dbl[..., r:r + ds], x_dbl[..., r + ds:]
    dt = F.softplus(dt_low @ P[p + "dt_proj.weight"].t() + P[p + "dt_proj.bias"])
    A = -torch.exp(P[p + "A_log"])
    y = selective_scan(u, dt, A, Bm, Cm, P[p + "D"])
    return (y * F.silu(z)) @ P[p + "out_proj.weight"].t()


def forward(P, inputs, cfg):
    """inputs: LongTensor (B,T). Returns logits (B,T,vocab)."""
    dm = cfg["d_model"]
    E = P["embedding.weight"]
    h = E[inputs]
    for i in range(cfg["n_layer"]):
        p = "layers.%d." % i
        xn = F.layer_norm(h, (dm,), P[p + "norm.weight"], P[p + "norm.bias"], LN_EPS)
        h = h + mixer(P, p + "mixer.", xn, cfg)
    h = F.layer_norm(h, (dm,), P["norm_f.weight"], P["norm_f.bias"], LN_EPS)
    return h @ E.t()


def loss_fn(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# --------------------------------------------------------------- training
def lr_at(s, lr_max=LR_MAX, warmup=WARMUP, total=TOTAL):
    if s < warmup:
        return lr_max * (s + 1) / warmup
    p = (s - warmup) / max(1, total - warmup)
    return lr_max * 0.5 * (1.0 + math.cos(math.pi * p))


def decays(name, tensor):
    """weight_decay 0.1 for every >= 2-D parameter except A_log."""
    return tensor.dim() >= 2 and not name.endswith("A_log")


def run_trajectory(params32, cfg, inputs, targets, dtype):
    names = [n for n, _ in param_shapes(cfg)]
    P = to_torch(params32, dtype)
    plist = [P[n] for n in names]
    decay = [P[n] for n in names if decays(n, P[n])]
    no_decay = [P[n] for n in names if not decays(n, P[n])]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR_MAX, betas=(BETA1, BETA2), eps=ADAM_EPS, foreach=False)
    losses, norms, lrs = [], [], []
    for s in range(inputs.shape[0]):
        opt.zero_grad(set_to_none=False)
        logits = forward(P, inputs[s], cfg)
        assert logits.dtype == dtype
        loss = loss_fn(logits, targets[s])
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(plist, CLIP)
        lr = lr_at(s)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        losses.append(loss.item())
        norms.append(gn.item())
        lrs.append(lr)
    final = torch.cat([P[n].detach().reshape(-1) for n in names])
    return np.array(losses), np.array(norms), np.array(lrs), final


# ------------------------------------------------------------- file output
def checkpoint_bytes(cfg, params32):
    header = [0] * 256
    header[0:13] = [CKPT_MAGIC, 1, cfg["vocab_size"], cfg["d_model"], cfg["n_layer"],
                    cfg["d_state"], cfg["d_conv"], cfg["expand"], cfg["dt_rank"], 0, 1, 0, 0]
    out = [struct.pack("<256i", *header)]
    for name, shape in param_shapes(cfg):
        a = params32[name]
        assert a.shape == tuple(shape) and a.dtype == np.float32
        out.append(a.astype("<f4").tobytes(order="C"))
    return b"".join(out)


def windows(corpus, offsets, T):
    x = np.array([[corpus[o + t] for t in range(T)] for o in offsets], dtype=np.int32)
    y = np.array([[corpus[o + t + 1] for t in range(T)] for o in offsets], dtype=np.int32)
    return x, y


# ------------------------------------------------------------ self checks
def check_conv(P, cfg):
    """F.conv1d(..., padding=d_conv-1)[..., :T] equals the explicit causal sum."""
    di, dc = cfg["expand"] * cfg["d_model"], cfg["d_conv"]
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(2, 9, di, generator=g, dtype=torch.float64)
    w, b = P["layers.0.mixer.conv1d.weight"].detach(), P["layers.0.mixer.conv1d.bias"].detach()
    ref = F.conv1d(xs.transpose(1, 2), w, b, padding=dc - 1, groups=di)[..., :9].transpose(1, 2)
    man = torch.zeros_like(ref)
    for t in range(9):
        man[:, t] = b
        for k in range(dc):
            tt = t - (dc - 1) + k
            if tt >= 0:
                man[:, t] += w[:, 0, k] * xs[:, tt]
    assert torch.allclose(ref, man, rtol=1e-12, atol=1e-12)


def check_scan():
    """The sequential loop equals the closed form
    y_t = sum_{s<=t} sum_n C_t[n] exp(sum_{r=s+1..t} dt_r A[n]) dt_s B_s[n] u_s + D u_t."""
    g = torch.Generator().manual_seed(11)
    Bsz, T, Di, N = 2, 6, 3, 4
    u = torch.randn(Bsz, T, Di, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(Bsz, T, Di, generator=g, dtype=torch.float64))
    A = -torch.rand(Di, N, generator=g, dtype=torch.float64) * 4
    Bm = torch.randn(Bsz, T, N, generator=g, dtype=torch.float64)
    Cm = torch.randn(Bsz, T, N, generator=g, dtype=torch.float64)
    D = torch.randn(Di, generator=g, dtype=torch.float64)
    y = selective_scan(u, dt, A, Bm, Cm, D)
    assert y.dtype == torch.float64
    ref = torch.zeros_like(y)
    for t in range(T):
        for s in range(t + 1):
            decay = torch.exp(dt[:, s + 1:t + 1].sum(1).unsqueeze(-1) * A)  # (B,Di,N)
            ref[:, t] += (Cm[:, t].unsqueeze(1) * decay * (dt[:, s] * u[:, s]).unsqueeze(-1)
                          * Bm[:, s].unsqueeze(1)).sum(-1)
        ref[:, t] += D * u[:, t]
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-12)


def check_gradcheck():
    """torch.autograd.gradcheck of the whole reference on a smaller config
    (all parameters except the embedding, which enters only by gather/matmul)."""
    cfg = dict(vocab_size=256, d_model=6, n_layer=1, d_state=3, d_conv=3, expand=2, dt_rank=1)
    p32 = init_params(cfg, seed=99)
    names = [n for n, _ in param_shapes(cfg)]
    P = to_torch(p32, torch.float64)
    E = P["embedding.weight"].detach()
    rs = np.random.RandomState(5)
    inp = torch.from_numpy(rs.randint(0, 256, size=(1, 7))).long()
    tgt = torch.from_numpy(rs.randint(0, 256, size=(1, 7))).long()
    rest = [n for n in names if n != "embedding.weight"]

    def f(*tensors):
        Q = dict(zip(rest, tensors))
        Q["embedding.weight"] = E
        return loss_fn(forward(Q, inp, cfg), tgt)

    assert torch.autograd.gradcheck(f, tuple(P[n] for n in rest), eps=1e-6, atol=1e-6, rtol=1e-4)


# -------------------------------------------------------------------- main
def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    cfg = TINY
    names = [n for n, _ in param_shapes(cfg)]
    params32 = init_params(cfg, seed=1234)
    nparams = sum(a.size for a in params32.values())

    corpus = TEXT * 8
    gx, gy = windows(corpus, [0, 211], 70)
    offs = [[(37 * s + 5) % 400, (37 * s + 5 + 173) % 400] for s in range(TOTAL)]
    tx = np.zeros((TOTAL, 2, 32), np.int32)
    ty = np.zeros((TOTAL, 2, 32), np.int32)
    for s in range(TOTAL):
        tx[s], ty[s] = windows(corpus, offs[s], 32)
    assert max(max(o) for o in offs) + 33 <= len(corpus) and 211 + 71 <= len(corpus)

    # ---- float64 logits, loss and gradients on the (2, 70) batch
    P = to_torch(params32, torch.float64)
    inp, tgt = torch.from_numpy(gx).long(), torch.from_numpy(gy).long()
    logits = forward(P, inp, cfg)
    assert logits.dtype == torch.float64 and logits.shape == (2, 70, 256)
    loss = loss_fn(logits, tgt)
    assert torch.isfinite(loss) and 3.0 < loss.item() < 20.0
    grads = torch.autograd.grad(loss, [P[n] for n in names])
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().max() > 0 for g in grads)

    # causality: the first 40 positions do not depend on later bytes
    with torch.no_grad():
        pre = forward(P, inp[:, :40], cfg)
    assert torch.allclose(pre, logits[:, :40].detach(), rtol=0, atol=1e-12)
    # dt*A reaches deep decays (about -40) somewhere in layer 0
    with torch.no_grad():
        dtb = F.softplus(P["layers.0.mixer.dt_proj.bias"])
        assert dtb.min() < 2e-3 and dtb.max() > 4.0
        assert (dtb.max() * -torch.exp(P["layers.0.mixer.A_log"])).min() < -30
    check_conv(P, cfg)
    check_scan()
    check_gradcheck()

    # ---- the 20-step AdamW trajectory, float64 (stored) and float32 (compared)
    tin, ttg = torch.from_numpy(tx).long(), torch.from_numpy(ty).long()
    l64, n64, lrs, final64 = run_trajectory(params32, cfg, tin, ttg, torch.float64)
    l32, n32, _, final32 = run_trajectory(params32, cfg, tin, ttg, torch.float32)
    assert final64.dtype == torch.float64 and final64.numel() == nparams
    assert np.isfinite(l64).all() and l64[-1] < l64[0]
    dloss = float(np.abs(l64 - l32).max())
    dparam = float((final64 - final32.double()).abs().max())
    dnorm = float(np.abs(n64 - n32).max() / np.abs(n64).max())

    # ---- write the files
    os.makedirs(FIXDIR, exist_ok=True)
    ck = checkpoint_bytes(cfg, params32)
    assert len(ck) == 1024 + 4 * nparams
    with open(CKPT_OUT, "wb") as f:
        f.write(ck)

    f32 = lambda t: (t.detach().numpy() if torch.is_tensor(t) else np.asarray(t)).astype(np.float32)
    entries = [
        ("config", np.array([cfg[k] for k in ("vocab_size", "d_model", "n_layer", "d_state",
                                              "d_conv", "expand", "dt_rank")], np.int32)),
        ("inputs", gx),
        ("targets", gy),
        ("logits", f32(logits)),
        ("loss", f32(loss.reshape(1))),
    ]
    entries += [("grad." + n, f32(g)) for n, g in zip(names, grads)]
    entries += [
        ("traj.inputs", tx),
        ("traj.targets", ty),
        ("traj.losses", f32(l64)),
        ("traj.grad_norms", f32(n64)),
        ("traj.lrs", f32(lrs)),
        ("traj.hparams", f32([LR_MAX, BETA1, BETA2, ADAM_EPS, WD, CLIP, WARMUP, TOTAL])),
        ("traj.final_params", f32(final64)),
    ]
    size = mbfix.write(MBFX_OUT, entries)
    assert size < 1 << 20
    back = mbfix.read(MBFX_OUT)
    assert list(back) == [e[0] for e in entries]

    print("params %d; checkpoint %d bytes; mbfx %d bytes" % (nparams, len(ck), size))
    print("loss at init (2x70) %.6f" % loss.item())
    print("trajectory losses %.4f -> %.4f" % (l64[0], l64[-1]))
    print("float32 vs float64 trajectory: max |dloss| %.3e, max |dparam| %.3e, "
          "max rel |dgrad_norm| %.3e" % (dloss, dparam, dnorm))


if __name__ == "__main__":
    main()
