"""PyTorch interop (runs when python3-torch is installed; CI installs it)."""
import numpy as np
import pytest

import mambabyte

torch = pytest.importorskip("torch", reason="python3-torch is not installed")

SMALL = dict(d_model=32, n_layer=2, d_state=8)
X = np.frombuffer(b"The harbour froze in 1892. Caf\xc3\xa9 \xe2\x80\x93 \xe5\xa5\x88", np.uint8).reshape(1, -1)


class _TorchNet(torch.nn.Module):
    """A module built here with the checkpoint's names (no forward needed)."""

    def __init__(self, c):
        super().__init__()
        nn = torch.nn
        dm, di, ds, dc, r = c["d_model"], c["expand"] * c["d_model"], c["d_state"], c["d_conv"], c["dt_rank"]
        self.embedding = nn.Embedding(256, dm)
        self.layers = nn.ModuleList()
        for _ in range(c["n_layer"]):
            layer = nn.Module()
            layer.norm = nn.LayerNorm(dm)
            mix = layer.mixer = nn.Module()
            mix.in_proj = nn.Linear(dm, 2 * di, bias=False)
            mix.conv1d = nn.Conv1d(di, di, dc, groups=di, padding=dc - 1)
            mix.x_proj = nn.Linear(di, r + 2 * ds, bias=False)
            mix.dt_proj = nn.Linear(r, di)
            mix.A_log = nn.Parameter(torch.randn(di, ds))
            mix.D = nn.Parameter(torch.randn(di))
            mix.out_proj = nn.Linear(di, dm, bias=False)
            self.layers.append(layer)
        self.norm_f = nn.LayerNorm(dm)


def test_torch_round_trip():
    torch.manual_seed(0)
    c = dict(vocab_size=256, d_model=32, n_layer=2, d_state=8, d_conv=4, expand=2, dt_rank=2)
    net = _TorchNet(c)
    m = mambabyte.Model.from_torch(net)
    assert m.config == dict(c, norm="layernorm", untied_head=False)
    sd = m.state_dict()
    for k, v in net.state_dict().items():
        assert np.array_equal(sd[k], v.numpy()), k
    # and back: a module of ours with the same names and weights
    back = m.to_torch()
    assert set(back.state_dict()) == set(net.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    m2 = mambabyte.Model.from_torch(back.state_dict())
    assert np.array_equal(m.forward(X), m2.forward(X))


def test_torch_forward_matches_c():
    m = mambabyte.Model.create(SMALL, seed=11)
    with torch.no_grad():
        ref = m.to_torch().double()(torch.from_numpy(X.astype(np.int64))).numpy()
    got = m.forward(X)
    assert np.max(np.abs(got - ref)) < 1e-4 * max(1.0, np.max(np.abs(ref)))
