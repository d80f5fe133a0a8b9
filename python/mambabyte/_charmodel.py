"""CharModel: a model as the WikiText char-level benchmark's runner drives it."""

import ctypes
import inspect
import math

from ._core import _check, _decode
from ._lib import CharScore, lib

try:  # under the benchmark's runner: subclass its CharModel so its isinstance check passes
    from wikitext import CharModel as _Base
except Exception:  # not under the runner (any failure to import it): a plain class
    _Base = object


def _predict_returns_dict(base):
    """True when the runner's CharModel.predict is annotated to return a
    dict (the older runner: probabilities, argmax taken by the runner)."""
    fn = getattr(base, "predict", None)
    if fn is None:
        return False
    try:
        ann = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    if ann is inspect.Signature.empty or ann is str:
        return False
    if ann is dict or getattr(ann, "__origin__", None) is dict:  # dict, dict[str, float], typing.Dict[...]
        return True
    text = (ann if isinstance(ann, str) else repr(ann)).strip().strip("'\"").lower().replace("typing.", "")
    return text.startswith(("dict", "mapping"))  # a string annotation ("dict[str, float]"), or Mapping


class CharModel(_Base):
    """A model in the benchmark's protocol: reset() once, then for each
    character predict() and observe(true_char).

    reset() resets the stream and feeds one 0x00 byte, exactly as
    `mambabyte eval` does, so both score a text the same way.  predict()
    is the exact greedy character (mb_stream_predict_char): the argmax over
    every Unicode character of P(char | text so far), the product of its
    UTF-8 bytes' probabilities.  It returns a str, or under an older runner
    whose CharModel.predict is annotated to return a dict, a dict whose
    first (and largest) entry is that character.  ascii_predict() is the
    protocol's rule (argmax over bytes 0..127), what `mambabyte eval`
    reports as char accuracy."""

    def __init__(self, model):
        self.model = model
        self._stream = model.stream()
        self._s = self._stream._s
        self._score = CharScore()
        self._dict = _predict_returns_dict(_Base) if _Base is not object else False
        self.reset()

    def reset(self):
        """Clears the context (keeps the weights) and feeds the 0x00 start byte."""
        lib.mb_stream_reset(self._s)
        self._logits = lib.mb_stream_step(self._s, 0)

    def observe(self, char):
        """Commits one ground-truth character (a str of length 1)."""
        if not isinstance(char, str):
            raise TypeError("observe() takes a str of one character, not %s" % type(char).__name__)
        if len(char) != 1:
            raise ValueError("observe() takes exactly one character, got %d: %r" % (len(char), char[:20]))
        try:
            data = char.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("observe(): %r is a lone surrogate, not a character" % char) from None
        step, s = lib.mb_stream_step, self._s
        for b in data:
            logits = step(s, b)
        self._logits = logits

    def predict_char(self):
        """The exact greedy next character (always a str)."""
        _check(lib.mb_stream_predict_char(self._s, self._logits, ctypes.byref(self._score)), "predict")
        sc = self._score
        return chr(sc.bytes[0]) if sc.len == 1 else _decode(sc)

    def predict(self):
        """The exact greedy next character: a str (or a dict under the older runner)."""
        if self._dict:
            return self.distribution(top=32)
        return self.predict_char()

    def ascii_predict(self):
        """The benchmark protocol's rule: the argmax over bytes 0..127, as a str."""
        row = self._logits
        best = 0
        for i in range(1, 128):
            if row[i] > row[best]:
                best = i
        return chr(best)

    def distribution(self, top=32):
        """{char: probability} of the `top` most probable next characters,
        best first (mb_stream_top_chars): the first is predict()'s."""
        top = int(top)
        if not 1 <= top <= 65536:
            raise ValueError("top must be in [1, 65536]")
        out = (CharScore * top)()
        _check(lib.mb_stream_top_chars(self._s, self._logits, top, out), "distribution")
        return {_decode(sc): math.exp(sc.logp) for sc in out}
