"""mamba_ssm / Hugging Face interop: a PyTorch reference with mamba_ssm's
module names and order (tools/mamba_ssm_format.py) against the C model."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mambabyte

torch = pytest.importorskip("torch", reason="python3-torch is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mamba_ssm_format as fmt  # noqa: E402

X = np.frombuffer(b"The harbour froze in 1892. Caf\xc3\xa9 \xe2\x80\x93 ok", np.uint8).reshape(1, -1)
CONVERT = [sys.executable, os.path.join(ROOT, "tools", "convert_mamba_ssm.py")]

# LayerNorm and RMSNorm, tied and untied, d_state 16, dt_rank 3 != ceil(32/16)
CONFIGS = {
    "layernorm_tied": dict(d_model=32, n_layer=2, d_state=16, d_conv=4, expand=2, dt_rank=2, norm=0, untied_head=0),
    "rmsnorm_untied_r3": dict(d_model=32, n_layer=2, d_state=16, d_conv=4, expand=2, dt_rank=3, norm=1, untied_head=1),
    "rmsnorm_tied": dict(d_model=24, n_layer=3, d_state=16, d_conv=3, expand=2, dt_rank=2, norm=1, untied_head=0),
    "layernorm_untied": dict(d_model=24, n_layer=1, d_state=16, d_conv=4, expand=3, dt_rank=5, norm=0, untied_head=1),
}


def reference(c, seed):
    torch.manual_seed(seed)
    net = fmt.MambaLMHeadModelRef(dict(c, vocab_size=256))
    with torch.no_grad():  # every parameter away from its init, so each matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def ref_logits(net):
    with torch.no_grad():
        return net.double()(torch.from_numpy(X.astype(np.int64))).numpy()[0]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def state_dict_np(net):
    return {k: v.detach().float().numpy().copy() for k, v in net.state_dict().items()}


def check_c(path, want, c):
    m = mambabyte.Model.load(path)
    assert rel(m.forward(X)[0], want) < 1e-5
    s = m.stream()
    steps = np.stack([np.array(s.step(int(b)), np.float64) for b in X[0]])
    assert rel(steps, want) < 1e-5
    got = m.config
    for k in ("d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank"):
        assert got[k] == c[k], k
    assert got["norm"] == ("rmsnorm" if c["norm"] else "layernorm") and got["untied_head"] == bool(c["untied_head"])
    return m


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_python_model_with_each_norm_and_head(name):
    """Model.create / config / state_dict / from_state_dict / to_torch with
    RMSNorm and an untied head: the torch module's logits equal the C forward."""
    c = dict(CONFIGS[name])
    c["norm"], c["untied_head"] = ("rmsnorm" if c["norm"] else "layernorm"), bool(c["untied_head"])
    m = mambabyte.Model.create(c, seed=3)
    assert m.config == dict(c, vocab_size=256)
    sd = m.state_dict()
    assert ("lm_head.weight" in sd) == c["untied_head"] and ("layers.0.norm.bias" in sd) == (c["norm"] == "layernorm")
    m2 = mambabyte.Model.from_state_dict(sd)  # the config inferred from the names and shapes
    assert m2.config == m.config and np.array_equal(m2.forward(X), m.forward(X))
    net = m.to_torch()
    assert set(net.state_dict()) == set(sd)
    with torch.no_grad():
        t = net(torch.from_numpy(X.astype(np.int64))).numpy()
    assert rel(t[0].astype(np.float64), m.forward(X)[0].astype(np.float64)) < 1e-5
    with pytest.raises(ValueError):
        mambabyte.Model.create(dict(c, norm="batchnorm"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mamba_ssm_checkpoints_load_in_c(tmp_path, name):
    c = CONFIGS[name]
    net = reference(c, seed=len(name))
    want = ref_logits(net)
    sd = net.float().state_dict()
    keys = list(sd)
    assert keys.index(f"backbone.layers.0.mixer.A_log") < keys.index("backbone.layers.0.mixer.in_proj.weight")
    assert "lm_head.weight" in keys
    # pytorch_model.bin through the converter
    torch.save(sd, tmp_path / "pytorch_model.bin")
    r = subprocess.run(CONVERT + [str(tmp_path / "pytorch_model.bin"), str(tmp_path / "m.bin")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ("untied" in r.stdout) == bool(c["untied_head"]) and ("RMSNorm" in r.stdout) == bool(c["norm"])
    check_c(str(tmp_path / "m.bin"), want, c)
    # safetensors written here, in mamba_ssm's order, read by the C loader directly
    fmt.write_safetensors(tmp_path / "model.safetensors", state_dict_np(net.float()))
    check_c(str(tmp_path / "model.safetensors"), want, c)
    # without the backbone. prefix too
    fmt.write_safetensors(tmp_path / "plain.safetensors", {k.replace("backbone.", ""): v for k, v in state_dict_np(net).items()})
    check_c(str(tmp_path / "plain.safetensors"), want, c)


@pytest.mark.parametrize("dtype,tol", [("BF16", 1e-5), ("F16", 1e-5)])
def test_half_precision_safetensors(tmp_path, dtype, tol):
    c = CONFIGS["rmsnorm_untied_r3"]
    net = reference(c, seed=3)
    sd = state_dict_np(net)
    # the reference gets the same rounded weights the file holds
    if dtype == "BF16":
        rounded = {k: (fmt.f32_to_bf16_bits(v).astype(np.uint32) << 16).view(np.float32).reshape(v.shape) for k, v in sd.items()}
    else:
        rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in sd.items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in rounded.items()})
    fmt.write_safetensors(tmp_path / "h.safetensors", sd, dtype=dtype)
    m = mambabyte.Model.load(str(tmp_path / "h.safetensors"))
    assert rel(m.forward(X)[0], ref_logits(net)) < tol


def test_export_loads_into_mamba_ssm_names(tmp_path):
    """A model made here, exported by the CLI, loads strictly into the
    mamba_ssm-named reference with the same logits; re-import is bit-identical."""
    for norm, untied in [(0, 0), (1, 1)]:
        c = dict(CONFIGS["rmsnorm_untied_r3"], norm=norm, untied_head=untied)
        net = reference(c, seed=7)
        sd = {k.replace("backbone.", ""): v for k, v in state_dict_np(net).items()}
        if not untied:
            del sd["lm_head.weight"]
        fmt.write_mambabyte(tmp_path / "ours.bin", sd, fmt.infer_config(sd) if untied else dict(fmt.infer_config(sd)))
        r = subprocess.run([os.path.join(ROOT, "mambabyte"), "export", "--model", str(tmp_path / "ours.bin"), "--format",
                            "safetensors", "--out", str(tmp_path / "ours.safetensors")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        back = fmt.read_safetensors(tmp_path / "ours.safetensors")
        net2 = fmt.MambaLMHeadModelRef(dict(c, vocab_size=256))
        net2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=True)
        m = mambabyte.Model.load(str(tmp_path / "ours.bin"))
        assert rel(m.forward(X)[0], ref_logits(net2)) < 1e-5
        r = subprocess.run(CONVERT + [str(tmp_path / "ours.safetensors"), str(tmp_path / "again.bin")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "ours.bin").read_bytes()


def test_mamba_order_is_reordered_not_copied(tmp_path):
    """The hazard: mamba_ssm's values copied in its order under this
    project's header have the right size and load, but are wrong.  The
    converter reorders by name, so its output differs from that dump and
    matches the reference."""
    c = CONFIGS["layernorm_tied"]
    net = reference(c, seed=11)
    want = ref_logits(net)
    sd = net.float().state_dict()
    dump = tmp_path / "naive.bin"
    h = np.zeros(256, "<i4")
    h[:12] = [fmt.MAGIC, 1, 256, 32, 2, 16, 4, 2, 2, 0, 1, 0]
    with open(dump, "wb") as f:  # mamba_ssm's order, lm_head (tied) left out
        f.write(h.tobytes())
        for k, v in sd.items():
            if k != "lm_head.weight":
                f.write(v.numpy().astype("<f4").tobytes())
    naive = mambabyte.Model.load(str(dump))  # loads (sizes agree) ...
    assert rel(naive.forward(X)[0], want) > 1e-2  # ... and is wrong
    torch.save(sd, tmp_path / "pytorch_model.bin")
    r = subprocess.run(CONVERT + [str(tmp_path / "pytorch_model.bin"), str(tmp_path / "conv.bin")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "conv.bin").read_bytes() != dump.read_bytes()
    assert rel(mambabyte.Model.load(str(tmp_path / "conv.bin")).forward(X)[0], want) < 1e-5


@pytest.mark.parametrize("mutate,msg", [
    (lambda sd: sd.pop("backbone.layers.1.mixer.D"), "missing tensor layers.1.mixer.D"),
    (lambda sd: sd.__setitem__("backbone.layers.0.mixer.D", torch.zeros(3)), "layers.0.mixer.D has shape (3,)"),
    (lambda sd: sd.__setitem__("backbone.layers.0.mixer.extra", torch.zeros(3)), "unexpected tensor layers.0.mixer.extra"),
])
def test_converter_checks_names_and_shapes(tmp_path, mutate, msg):
    net = reference(CONFIGS["layernorm_tied"], seed=1)
    sd = dict(net.state_dict())
    mutate(sd)
    torch.save(sd, tmp_path / "bad.bin")
    r = subprocess.run(CONVERT + [str(tmp_path / "bad.bin"), str(tmp_path / "out.bin")], capture_output=True, text=True)
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    assert not (tmp_path / "out.bin").exists()
