#!/usr/bin/env python3
"""Instructions per (token, channel, state) element in the CUDA scan loops.

Usage: tools/scan_isa_count.py DUMP      DUMP: `cuobjdump -sass` output (SASS)
                                          or `nvcc -ptx` output (PTX) of
                                          mambabyte_cuda.cuh for one arch.
A loop is a backward branch to a label (PTX `$L__BB..`, SASS `.L_x_..`).
For the forward kernels (templated on NS, the register width of the states),
the token loop of NS=32 minus that of NS=16, over 16, is the per-state cost;
the rest of the NS=16 body is the per-(token, channel) cost (softplus, SiLU,
global loads/stores), which is divided by S at S=16.  The backward kernel
works on 16 states at a time, 4 tokens per segment; its loops are printed
with their per-element cost at S=16 (instructions / (tokens * 16)).
"""
import re
import sys


def functions(lines):
    out, cur = [], None
    for l in lines:
        m = re.match(r'\s*\.(?:visible )?\.entry (\S+?)\(', l) or re.match(r'\s*Function : (\S+)', l)
        if m:
            cur = [m.group(1), []]
            out.append(cur)
        elif cur:
            cur[1].append(l)
    return out


def loops(body):
    labels, ins = {}, []
    for l in body:
        s = l.strip()
        m = re.match(r'(\$L__BB\d+_\d+|\.L_x_\d+):', s)
        if m:
            labels[m.group(1)] = len(ins)
            continue
        m = re.match(r'/\*[0-9a-f]{4,}\*/\s+(.*?);', s)  # SASS line
        if m:
            ins.append(m.group(1))
            continue
        if not s or s[0] in '/.{})' or s.startswith('//'):
            continue
        ins.append(s)
    res = []
    for j, s in enumerate(ins):
        m = re.search(r'\bBRA\b.*?(\.L_x_\d+)|\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+)', s)
        if not m:
            continue
        tgt = m.group(1) or m.group(2)
        if tgt in labels and labels[tgt] <= j:
            seg = ins[labels[tgt]:j + 1]
            ex2 = sum(('ex2.approx' in x) or ('MUFU.EX2' in x) for x in seg)
            res.append((len(seg), ex2))
    return res


def main():
    text = open(sys.argv[1]).read().split('\n')
    fs = {n: loops(b) for n, b in functions(text)}
    kind = 'SASS' if any('Function :' in l for l in text[:200]) or any('.L_x_' in l for l in text) else 'PTX'
    def biggest(pat):
        for n, ls in fs.items():
            if re.search(pat, n) and ls:
                return max(ls)
        return None
    print(f'{kind} instructions per (token, channel, state) element')
    for name, pat in (('forward output pass', 'scan_forward_kernel'), ('forward chunk-state pass', 'scan_chunk_state_kernel'),
                      ('backward carry-in pass', 'scan_chunk_grad_kernel')):
        a, b = biggest(pat + r'ILi16E'), biggest(pat + r'ILi32E')
        if not a or not b:
            continue
        per_state = (b[0] - a[0]) / 16.0
        per_token = a[0] - 16 * per_state
        print(f'  {name:26s} per state {per_state:5.2f}   per token {per_token:5.0f}   at S=16: {a[0] / 16.0:5.2f}')
    for n, ls in fs.items():
        if 'scan_backward_kernel' in n:
            big = sorted(x for x in ls if x[0] > 200)
            names = ['first pass (h at segment starts)', 'segment (recompute + reverse + dB/dC transpose)']
            total = 0.0
            for (cnt, ex2), what in zip(big[:2], names):
                total += cnt / 64.0
                print(f'  backward {what:48s} {cnt:5d} per 4 tokens x 16 states: {cnt / 64.0:5.2f} per element')
            if len(big) >= 2:
                print(f'  backward main kernel total {total:5.2f} per element (plus the carry-in pass above)')


if __name__ == '__main__':
    main()
