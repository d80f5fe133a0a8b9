"""Stream: step, feed (prefill) equal to repeated steps, copy; generate."""
import subprocess

import numpy as np
import pytest

import mambabyte
from conftest import ROOT

TEXT = "The harbour froze in 1892. Caf\u00e9 \u2013 \u5948 ".encode("utf-8") * 3


def test_step_equals_forward():
    m = mambabyte.Model.create(dict(d_model=32, n_layer=2, d_state=8), seed=2)
    s = m.stream()
    rows = np.stack([s.step(b) for b in TEXT])
    assert np.array_equal(rows, m.forward(TEXT)[0])


def test_feed_equals_repeated_step():
    m = mambabyte.Model.create(dict(d_model=32, n_layer=2, d_state=8), seed=2)
    a, b = m.stream(), m.stream()
    stepped = np.stack([a.step(x) for x in TEXT])
    fed = np.concatenate([b.feed(TEXT[:7]), b.feed(TEXT[7:50]), b.feed(TEXT[50:])])
    assert fed.shape == (len(TEXT), 256)
    assert np.array_equal(stepped, fed)
    assert np.array_equal(a.step(ord("x")), b.step(ord("x")))  # the same state after
    assert b.feed(b"").shape == (0, 256)


def test_copy_and_reset():
    m = mambabyte.Model.create(dict(d_model=32, n_layer=2, d_state=8), seed=2)
    s = m.stream()
    s.feed(TEXT[:20])
    c = s.copy()
    assert np.array_equal(s.step(65), c.step(65))
    s.reset()
    fresh = m.stream()
    assert np.array_equal(s.step(66), fresh.step(66))
    into = m.stream()
    s.copy(into=into)
    assert np.array_equal(s.step(67), into.step(67))
    with pytest.raises(ValueError):
        s.step(256)
    with pytest.raises(TypeError):
        s.feed(12)
    s.reset()
    with pytest.raises(ValueError, match="no byte"):
        s.predict_char()


def test_generate_reproducible_and_equal_to_cli(trained):
    m, path = trained
    a = m.generate("The harbour", 80, temperature=0.8, top_k=20, seed=7)
    assert len(a) == 80
    assert a == m.generate(b"The harbour", 80, temperature=0.8, top_k=20, seed=7)
    assert a != m.generate("The harbour", 80, temperature=0.8, top_k=20, seed=8)
    greedy = m.generate("The ", 40, temperature=0)
    assert greedy == m.generate("The ", 40, temperature=0, seed=99)  # greedy ignores the seed
    # speculative generation: greedy gives the same bytes with any drafter
    assert greedy == m.generate("The ", 40, temperature=0, draft="lookup", draft_len=4) == m.generate("The ", 40, temperature=0, draft=m)
    assert len(m.generate("The ", 40, temperature=0.8, seed=3, draft="lookup")) == 40
    # self-speculation: the draft is this model's own weights at int8 or bf16
    assert greedy == m.generate("The ", 40, temperature=0, draft="self:int8") == m.generate("The ", 40, temperature=0, draft="self:bf16")
    with pytest.raises(ValueError):
        m.generate("The ", 4, draft="self:fp16")
    # `mambabyte sample` with the same arguments prints the prompt, the same bytes and a newline
    raw = subprocess.run([str(ROOT / "mambabyte"), "sample", "--model", str(path), "--prompt", "The harbour", "--bytes",
                          "80", "--temperature", "0.8", "--top-k", "20", "--seed", "7"], capture_output=True, check=True)
    assert raw.stdout == b"The harbour" + a + b"\n"


def test_precision_streams_and_batched():
    m = mambabyte.Model.create(dict(d_model=32, n_layer=2, d_state=8), seed=4)
    text = b"precision and batched streams"
    ref = m.stream().feed(text)
    for prec, bound in (("bf16", 1.2e-2), ("int8", 3e-2)):
        got = m.stream(precision=prec).feed(text)
        err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
        assert 0 < err.max() <= bound, (prec, err.max())
        one = m.stream(precision=prec)
        b = m.streams(3, precision=prec)
        b.feed(1, b"ab")
        one.feed(b"ab")
        for byte in b"xyz":
            rows = b.step([byte, byte], which=[1, 2])
            assert np.array_equal(rows[0], one.step(byte))
        assert m.evaluate(text, precision=prec)["chars"] == len(text)
        assert len(m.generate(b"a", n=5, precision=prec, seed=1)) == 5
    with pytest.raises(ValueError):
        m.stream(precision="fp16")


def test_close_and_with():
    """Model, Stream and Streams close now, twice harmlessly, and refuse use afterwards."""
    m = mambabyte.Model.create(dict(d_model=32, n_layer=2, d_state=8), seed=2)
    with m.stream() as s:
        first = s.step(1)
    with pytest.raises(ValueError, match="stream is closed"):
        s.step(1)
    s.close()
    ss = m.streams(2)
    ss.close()
    ss.close()
    with pytest.raises(ValueError, match="streams object is closed"):
        ss.reset(0)
    assert np.array_equal(m.stream().step(1), first)  # closing a stream leaves the model alone
    with m:
        pass
    with pytest.raises(ValueError, match="model is closed"):
        m.stream()
