"""bench/wikitext/submission.py under a runner written like the benchmark's:
a stub wikitext.CharModel ABC, train() with a small text and a 20 s budget."""
import collections
import subprocess
import sys
import textwrap

from conftest import ROOT, SAMPLE, python_env

# The runner's CharModel as the benchmark describes it.
WIKITEXT_STUB = '''
import abc

class CharModel(abc.ABC):
    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def predict(self) -> str: ...

    @abc.abstractmethod
    def observe(self, char: str) -> None: ...
'''

RUNNER = textwrap.dedent('''
    import importlib.util, sys, time
    from wikitext import CharModel
    spec = importlib.util.spec_from_file_location("submission", sys.argv[1])
    submission = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submission)          # importing is not timed
    text = open(sys.argv[2], encoding="utf-8").read()
    cut = len(text) * 9 // 10
    train_text, valid_text = text[:cut], text[cut:]
    t0 = time.monotonic()
    model = submission.train(train_text)
    seconds = time.monotonic() - t0
    assert isinstance(model, CharModel), type(model).__mro__
    model.reset()
    correct = total = 0
    for ch in valid_text[:60000]:
        p = model.predict()
        if isinstance(p, dict):
            p = max(p, key=p.get)
        correct += p == ch
        total += 1
        model.observe(ch)
    print("RESULT %.3f %.6f %d" % (seconds, correct / total, total))
''')

BUDGET = 20.0
# Measured: on the sample text (90% trained on, the last 10% = 2,559 chars
# scored) this CPU run scored 0.330, 0.404 and 0.420 in three runs on a
# 2-core machine shared with other work (load average 4: 62 to ~110 steps
# in the budget).  Always predicting the training text's most frequent
# character (space) scores 0.185; an untrained model about 0.02.  The floor
# sits well above that baseline and well below every measured run.
FLOOR = 0.25


def test_submission_trains_and_scores(tmp_path):
    (tmp_path / "wikitext.py").write_text(WIKITEXT_STUB)
    (tmp_path / "runner.py").write_text(RUNNER)
    r = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(ROOT / "bench" / "wikitext" / "submission.py"),
                        str(SAMPLE)], capture_output=True, text=True, timeout=300,
                       env=python_env(PYTHONPATH="%s" % tmp_path, MB_SUBMISSION_BUDGET=str(BUDGET)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1]
    seconds, acc, n = float(line.split()[1]), float(line.split()[2]), int(line.split()[3])
    print(line)
    assert seconds < BUDGET, "train() took %.1f s, budget %.0f s" % (seconds, BUDGET)
    assert seconds > BUDGET * 0.5, "train() used only %.1f s of %.0f s" % (seconds, BUDGET)
    text = SAMPLE.read_text(encoding="utf-8")
    cut = len(text) * 9 // 10
    top = collections.Counter(text[:cut]).most_common(1)[0][0]
    baseline = sum(c == top for c in text[cut:]) / len(text[cut:])
    assert n == len(text) - cut
    assert acc > FLOOR > baseline, "accuracy %.4f (floor %.2f, most-frequent-character baseline %.4f)" % (
        acc, FLOOR, baseline)
    assert "step " in r.stdout and "| loss " in r.stdout  # the CLI's progress lines
    assert "WARNING" in r.stderr or "cuda" in r.stdout  # the CPU warning, or a GPU run
