"""CharModel under a loop written exactly like the benchmark's runner."""
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mambabyte
from conftest import ROOT, python_env, run_cli


def runner_loop(model, valid_text, n=60000, rule=None):
    """The runner: reset() once, then for each of the first n characters
    predict(), compare, observe(true_char)."""
    model.reset()
    correct, preds = 0, []
    for ch in valid_text[:n]:
        p = rule() if rule else model.predict()
        if isinstance(p, dict):
            p = max(p, key=p.get)
        preds.append(p)
        correct += p == ch
        model.observe(ch)
    return correct / min(n, len(valid_text)), preds


def test_ascii_rule_equals_cli_eval_char_for_char(trained, sample_text, tmp_path):
    m, path = trained
    text = sample_text[:4000]
    cm = mambabyte.CharModel(m)
    acc, preds = runner_loop(cm, text, rule=cm.ascii_predict)
    # the CLI on the same text and model
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    r = run_cli("eval", "--model", path, "--data", tmp_path / "t.txt", "--chars", 4000, "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    cli = json.loads((tmp_path / "e.json").read_text())
    assert cli["chars"] == len(text)
    assert round(acc, 6) == cli["val_char_accuracy"]
    assert m.evaluate(text, 4000)["char_accuracy"] == acc  # mb_eval_text's count, exactly
    # character for character: the argmax over 0..127 of the parallel forward over 0x00 + text
    rows = m.forward(b"\x00" + text.encode("utf-8"))[0]
    bounds = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])[:-1]
    want = [chr(int(np.argmax(rows[b][:128]))) for b in bounds]
    assert preds == want


def test_exact_rule_differs_only_at_multibyte_predictions(multibyte_model):
    m, data = multibyte_model
    text = data.decode("utf-8")[:900]
    cm = mambabyte.CharModel(m)
    cm.reset()
    exact_right = ascii_right = multibyte_right = 0
    for ch in text:
        e, a = cm.predict(), cm.ascii_predict()
        assert isinstance(e, str) and len(e) == 1
        if len(e.encode("utf-8")) == 1:
            assert e == a
        exact_right += e == ch
        ascii_right += a == ch
        multibyte_right += e == ch and ord(ch) > 127
        cm.observe(ch)
    assert multibyte_right >= 30  # é, – and 奈 predicted correctly
    assert exact_right > ascii_right
    r = m.evaluate(text, exact=True)
    assert r["exact_char_accuracy"] == exact_right / len(text)
    assert r["char_accuracy"] == ascii_right / len(text)
    d = cm.distribution(top=5)
    assert list(d)[0] == cm.predict() and len(d) == 5
    assert all(0 <= p <= 1 for p in d.values()) and sum(d.values()) <= 1 + 1e-9


def _peaked_model(seed, scale, boost):
    """A random tiny model with peaked distributions; high bytes boosted so
    that multi-byte characters win (as tests/test_predict.c)."""
    m = mambabyte.Model.create(dict(d_model=8, n_layer=1, d_state=4), seed=seed)
    sd = m.state_dict()
    sd["embedding.weight"] *= scale
    if boost:
        u = np.where(np.arange(8) % 2, 1.0, -0.5).astype(np.float32)
        sd["norm_f.bias"] = u
        sd["norm_f.weight"] *= 0.3
        sd["embedding.weight"][0x80:] += boost * u / float(u @ u)
    return mambabyte.Model.from_state_dict(sd)


def _log_softmax(x):
    """As the library: (x - max) - log(sum of float32 exp(x - max)), in double."""
    mx = x.max()
    return (x.astype(np.float64) - float(mx)) - math.log(np.exp(x - mx).astype(np.float64).sum())


def brute_force(stream):
    """Every valid UTF-8 character's log-probability from stream's state, by
    stepping copies with shared prefixes.  Returns {bytes: logp} and the steps."""
    m = stream.model
    lv = [stream.copy()] + [m.stream() for _ in range(3)]
    scores, steps = {}, 0
    root = _log_softmax(np.ctypeslib.as_array(stream._last, shape=(256,)))

    def walk(d, prefix, lp, need, row):
        nonlocal steps
        lo, hi = 0x80, 0xBF
        if d == 1:
            lo = {0xE0: 0xA0, 0xF0: 0x90}.get(prefix[0], 0x80)
            hi = {0xED: 0x9F, 0xF4: 0x8F}.get(prefix[0], 0xBF)
        for b in range(lo, hi + 1):
            p = prefix + bytes([b])
            if d + 1 == need:
                scores[p] = lp + row[b]
                continue
            lv[d].copy(into=lv[d + 1])
            nxt = _log_softmax(lv[d + 1].step(b))
            steps += 1
            walk(d + 1, p, lp + row[b], need, nxt)

    for b in range(128):
        scores[bytes([b])] = root[b]
    for b in range(0xC2, 0xF5):
        lv[0].copy(into=lv[1])
        row = _log_softmax(lv[1].step(b))
        steps += 1
        walk(1, bytes([b]), root[b], 2 if b <= 0xDF else 3 if b <= 0xEF else 4, row)
    return scores, steps


@pytest.mark.parametrize("seed,scale,boost", [(100, 1.0, 0.0), (102, 6.0, 4.0), (103, 10.0, 8.0)])
def test_exact_argmax_against_brute_force(seed, scale, boost):
    m = _peaked_model(seed, scale, boost)
    s = m.stream()
    s.step(0)
    for b in "Nara \u5948".encode("utf-8"):
        s.step(b)
    scores, steps = brute_force(s)
    assert len(scores) == 1112064 and 17000 < steps < 23000
    best = max(scores.values())
    ch, lp = s.predict_char()
    assert abs(lp - best) < 1e-6  # numpy's float32 exp is not glibc's expf bit for bit: scores agree to 1e-6
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if ranked[0][1] - ranked[1][1] > 1e-6:
        assert ch.encode("utf-8") == ranked[0][0]
    if boost:
        assert len(ch.encode("utf-8")) > 1  # these models are built so that a multi-byte character wins
    top = s.top_chars(5)
    assert [c for c, _ in top][0] == ch
    assert all(abs(l - ranked[i][1]) < 1e-6 for i, (_, l) in enumerate(top))


def test_observe_bad_input(trained):
    cm = mambabyte.CharModel(trained[0])
    with pytest.raises(TypeError):
        cm.observe(65)
    with pytest.raises(TypeError):
        cm.observe(b"a")
    with pytest.raises(ValueError):
        cm.observe("ab")
    with pytest.raises(ValueError):
        cm.observe("")
    with pytest.raises(ValueError):
        cm.observe("\ud800")
    cm.observe("\u5948")  # any one character is fine
    assert isinstance(cm.predict(), str)


RUNNER_STUB = '''
import abc
class CharModel(abc.ABC):
    @abc.abstractmethod
    def reset(self) -> None: ...
    @abc.abstractmethod
    def predict(self) -> {ret}: ...
    @abc.abstractmethod
    def observe(self, char: str) -> None: ...
'''


@pytest.mark.parametrize("ret,kind", [("str", "str"), ("dict[str, float]", "dict"), ('"dict[str, float]"', "dict")])
def test_subclasses_the_runners_charmodel(tmp_path, trained, ret, kind):
    (tmp_path / "wikitext.py").write_text(RUNNER_STUB.format(ret=ret))
    code = textwrap.dedent('''
        import sys, wikitext, mambabyte
        m = mambabyte.CharModel(mambabyte.Model.load(sys.argv[1]))
        assert isinstance(m, wikitext.CharModel)
        m.reset()
        p = m.predict()
        print(repr((type(p).__name__, max(p, key=p.get) if isinstance(p, dict) else p, m.predict_char())))
    ''')
    r = subprocess.run([sys.executable, "-c", code, str(trained[1])], capture_output=True, text=True,
                       env=python_env(PYTHONPATH=str(tmp_path) + ":" + str(ROOT / "python")))
    assert r.returncode == 0, r.stderr
    t, argmax, exact = eval(r.stdout)
    assert t == kind and argmax == exact
