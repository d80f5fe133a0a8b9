#!/usr/bin/env python3
"""Convert between mamba_ssm / Hugging Face checkpoints and mambabyte's.

    tools/convert_mamba_ssm.py IN OUT [--to mambabyte|safetensors|pytorch]

IN: a mamba_ssm MambaLMHeadModel state_dict as pytorch_model.bin (needs
PyTorch) or .safetensors (names with or without "backbone."; F32, BF16 or
F16), or a mambabyte checkpoint.  OUT: a mambabyte checkpoint (default, or
when OUT does not end in .safetensors), safetensors with mamba_ssm's names
(OUT ends in .safetensors), or a pytorch_model.bin state_dict (--to pytorch).

Every tensor is checked by name and shape against the config its shapes
give (a missing, extra or mis-shaped tensor is an error naming it), and
written in the target's order, looked up by name: a file in mamba_ssm's
order (A_log and D first in each mixer) is reordered, never copied through.
A head equal to the embedding bit for bit is kept tied.  Memory: the input
is memory-mapped (safetensors, mambabyte) or loaded once (pickle), and the
output is written tensor by tensor, so at most about twice the file.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_ssm_format as fmt  # noqa: E402


def _kind(path):
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == fmt.MAGIC:
        return "mambabyte"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "pytorch"


def load(path):
    """{name without "backbone.": float32 array} and where it came from."""
    kind = _kind(path)
    if kind == "mambabyte":
        return fmt.read_mambabyte(path)[0], kind
    if kind == "safetensors":
        raw = fmt.read_safetensors(path)
    else:
        import torch
        obj = torch.load(path, map_location="cpu")
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: not a state_dict")
        raw = {k: v.detach().float().numpy() for k, v in obj.items()}
    sd = {}
    for k, v in raw.items():
        name = k[len("backbone."):] if k.startswith("backbone.") else k
        if name in sd:
            raise ValueError(f"{path}: tensor {name} given twice (with and without backbone.)")
        sd[name] = v
    return sd, kind


def check(sd, what):
    """The config of sd, after checking every name and shape against it."""
    c = fmt.infer_config(sd)
    want = dict(fmt.tensor_table(c))
    for name, shape in want.items():
        if name not in sd:
            raise ValueError(f"{what}: missing tensor {name}")
        if tuple(sd[name].shape) != tuple(shape):
            raise ValueError(f"{what}: tensor {name} has shape {tuple(sd[name].shape)}, the config needs {tuple(shape)}")
    for name in sd:
        if name not in want and not (name == "lm_head.weight" and not c["untied_head"]):
            raise ValueError(f"{what}: unexpected tensor {name}")
    for name in want:
        if not np.all(np.isfinite(sd[name])):
            raise ValueError(f"{what}: tensor {name} has non-finite values")
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inp", metavar="IN")
    ap.add_argument("out", metavar="OUT")
    ap.add_argument("--to", choices=["mambabyte", "safetensors", "pytorch"])
    a = ap.parse_args(argv)
    to = a.to or ("safetensors" if a.out.endswith(".safetensors") else "mambabyte")
    try:
        sd, kind = load(a.inp)
        c = check(sd, a.inp)
        if to == "mambabyte":
            fmt.write_mambabyte(a.out, sd, c)
        elif to == "safetensors":
            fmt.write_safetensors(a.out, fmt.mamba_names({n: sd[n] for n, _ in fmt.tensor_table(c)}))
        else:
            import torch
            sdm = fmt.mamba_names({n: sd[n] for n, _ in fmt.tensor_table(c)})
            torch.save({k: torch.from_numpy(np.array(v, np.float32)) for k, v in sdm.items()}, a.out)
    except (ValueError, KeyError, OSError) as e:
        print(f"convert_mamba_ssm: {e}", file=sys.stderr)
        return 1
    print(f"{a.inp} ({kind}) -> {a.out} ({to}): d_model {c['d_model']}, {c['n_layer']} layers, d_state {c['d_state']}, "
          f"d_conv {c['d_conv']}, expand {c['expand']}, dt_rank {c['dt_rank']}, {'RMSNorm' if c['norm'] else 'LayerNorm'}, "
          f"{'untied' if c['untied_head'] else 'tied'} head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
