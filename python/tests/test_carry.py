"""Carried state (truncated BPTT, train(carry_state=True)) against a float64
PyTorch reference: the gradients of window w2's step from the state carried
out of w1 equal those of the one window w1||w2 with w1's positions left out
of the loss and the state stopped (detached) between the windows."""
import numpy as np
import pytest

import mambabyte

torch = pytest.importorskip("torch", reason="python3-torch is not installed")
F = torch.nn.functional
from mambabyte.torch_model import MambaByte  # noqa: E402

CONFIGS = {
    "layernorm": dict(d_model=24, n_layer=2, d_state=8, d_conv=4, expand=2, dt_rank=3),
    "rmsnorm_untied": dict(d_model=16, n_layer=3, d_state=4, d_conv=3, expand=2, dt_rank=2, norm="rmsnorm", untied_head=True),
}
B, T1, T2 = 2, 11, 9


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reference(net, x, y, stop):
    """float64 loss and gradients of w2's positions of the one window x (B, T1 + T2), the state
    stopped (detached) between w1 and w2 when stop (torch_model's forward(stop=T1))."""
    net.zero_grad()
    masked = torch.from_numpy(y.astype(np.int64))
    masked[:, :T1] = -100
    logits = net(torch.from_numpy(x.astype(np.int64)), stop=T1 if stop else None)
    loss = F.cross_entropy(logits.reshape(-1, 256), masked.reshape(-1), ignore_index=-100)
    loss.backward()
    return float(loss), {k: p.grad.numpy().copy() for k, p in net.named_parameters()}


def model(c, seed):
    m = mambabyte.Model.create(c, seed=seed)
    rng = np.random.default_rng(seed)  # every parameter away from its init, so each matters
    sd = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in m.state_dict().items()}
    return mambabyte.Model.from_state_dict(sd, m.config)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_carry_gradients_match_float64_torch(name):
    m = model(CONFIGS[name], 7)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (B, T1 + T2), dtype=np.uint8)
    y = rng.integers(0, 256, (B, T1 + T2)).astype(np.int32)
    carry = m.carry_state(B)
    m.gradients(x[:, :T1], y[:, :T1], carry)  # w1: only its carried state is kept
    assert np.any(carry != 0)
    loss, grads = m.gradients(x[:, T1:], y[:, T1:], carry)
    net = MambaByte.from_model(m).double()
    want_loss, want = reference(net, x, y, stop=True)
    assert abs(loss - want_loss) < 1e-5 * abs(want_loss)
    assert set(grads) == set(want)
    for k in want:
        assert rel(grads[k], want[k]) < 1e-4, k
    # the bound tells the truncated gradient from the full one and from w2 alone
    _, full = reference(net, x, y, stop=False)
    _, alone = m.gradients(x[:, T1:], y[:, T1:])
    assert max(rel(full[k], want[k]) for k in want) > 1e-2
    assert max(rel(alone[k], want[k]) for k in want) > 1e-2


def test_gradients_checks_its_arguments():
    m = mambabyte.Model.create(CONFIGS["layernorm"], seed=1)
    x = np.zeros((2, 5), np.uint8)
    with pytest.raises(ValueError):
        m.gradients(x, np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError):
        m.gradients(x, np.zeros((2, 5), np.int32), carry=m.carry_state(1))
