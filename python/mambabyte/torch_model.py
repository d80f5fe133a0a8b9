"""The model in PyTorch, with the checkpoint's parameter names (needs torch).

MambaByte(config) is a torch.nn.Module whose state_dict() has exactly the
names and shapes of a mambabyte checkpoint, so state dicts move both ways
(Model.to_torch, Model.from_torch).  Its forward is a readable reference
(the selective scan as a sequential loop over time), not a fast kernel.
"""

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5


class Mixer(nn.Module):
    def __init__(self, c):
        super().__init__()
        dm, di, ds, dc, r = c["d_model"], c["expand"] * c["d_model"], c["d_state"], c["d_conv"], c["dt_rank"]
        self.di, self.ds, self.dc, self.r = di, ds, dc, r
        self.in_proj = nn.Linear(dm, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, dc, groups=di, padding=dc - 1)
        self.x_proj = nn.Linear(di, r + 2 * ds, bias=False)
        self.dt_proj = nn.Linear(r, di)
        self.A_log = nn.Parameter(torch.zeros(di, ds))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, dm, bias=False)

    def forward(self, x, stop=None):
        T = x.shape[1]
        xs, z = self.in_proj(x).split(self.di, dim=-1)
        if stop:  # the state carried into position stop is a constant: w1's conv inputs and scan state
            xs = torch.cat([xs[:, :stop].detach(), xs[:, stop:]], 1)
        u = F.silu(self.conv1d(xs.transpose(1, 2))[..., :T].transpose(1, 2))
        dt_low, Bm, Cm = self.x_proj(u).split([self.r, self.ds, self.ds], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))
        A = -torch.exp(self.A_log)
        h = torch.zeros(x.shape[0], self.di, self.ds, dtype=x.dtype, device=x.device)
        ys = []
        for t in range(T):  # h_t = exp(dt A) h_{t-1} + dt B u ;  y_t = C h_t + D u
            h = h.detach() if t == stop else h
            dtt = dt[:, t].unsqueeze(-1)
            h = torch.exp(dtt * A) * h + dtt * Bm[:, t].unsqueeze(1) * u[:, t].unsqueeze(-1)
            ys.append((h * Cm[:, t].unsqueeze(1)).sum(-1))
        y = torch.stack(ys, 1) + u * self.D
        return self.out_proj(y * F.silu(z))


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight (mamba_ssm's RMSNorm; PyTorch 1.13 has none)."""

    def __init__(self, d, eps=LN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _norm(c):
    return RMSNorm(c["d_model"]) if c.get("norm", "layernorm") == "rmsnorm" else nn.LayerNorm(c["d_model"], eps=LN_EPS)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _norm(c)
        self.mixer = Mixer(c)

    def forward(self, x, stop=None):
        return x + self.mixer(self.norm(x), stop)


class MambaByte(nn.Module):
    """Byte-level Mamba: embedding, n_layer pre-norm residual Mamba blocks,
    a final norm (LayerNorm, or RMSNorm with config norm "rmsnorm"), and the
    output head: the embedding (tied) or lm_head (untied_head).
    forward(idx (B, T) long) -> logits (B, T, 256); stop=t detaches every
    layer's state between positions t-1 and t (truncated BPTT, as a window
    from a carried state)."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        self.embedding = nn.Embedding(config["vocab_size"], config["d_model"])
        self.layers = nn.ModuleList(Layer(config) for _ in range(config["n_layer"]))
        self.norm_f = _norm(config)
        if config.get("untied_head"):
            self.lm_head = nn.Linear(config["d_model"], config["vocab_size"], bias=False)

    def forward(self, idx, stop=None):
        h = self.embedding(idx)
        for layer in self.layers:
            h = layer(h, stop)
        head = self.lm_head.weight if self.config.get("untied_head") else self.embedding.weight
        return self.norm_f(h) @ head.t()

    @classmethod
    def from_model(cls, model):
        """A module holding a mambabyte.Model's weights (a copy)."""
        m = cls(model.config)
        m.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
        return m
