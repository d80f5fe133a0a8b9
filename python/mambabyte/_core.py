"""Model and Stream: the C model and its O(1)-state streams, from Python."""

import ctypes
import os

import numpy as np

from ._lib import CharScore, Config, SpecOptions, TensorInfo, lib

CONFIG_KEYS = ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank", "norm", "untied_head")
NORMS = ("layernorm", "rmsnorm")  # mb_norm_kind 0, 1


class MambaByteError(RuntimeError):
    """A failure reported by the C library.

    ``status`` is the mb_status value, ``status_string`` its name
    (mb_status_string) and ``detail`` the library's explanation
    (mb_last_error), e.g. the file and field of a bad checkpoint."""

    def __init__(self, status, detail, context=None):
        self.status = int(status)
        self.status_string = lib.mb_status_string(self.status).decode()
        self.detail = detail
        msg = "%s: %s" % (self.status_string, detail) if detail else self.status_string
        super().__init__("%s: %s" % (context, msg) if context else msg)


def _check(status, context=None):
    if status != 0:
        raise MambaByteError(status, lib.mb_last_error().decode("utf-8", "replace"), context)


def _path(p):
    return os.fsencode(os.fspath(p))


def _as_bytes(data, what="data"):
    """bytes-like or str (UTF-8) -> a bytes-like object (no copy for bytes-likes)."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise TypeError("%s must be bytes or str, not %s" % (what, type(data).__name__))


def _buffer(data):
    """A uint8 numpy view of a bytes-like object (no copy) and its address."""
    arr = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(1, np.uint8)
    return arr, arr.ctypes.data


def _config_struct(config):
    """A dict (partial: the rest is mb_config_default's), a Config or None -> a validated Config."""
    c = lib.mb_config_default()
    if isinstance(config, Config):
        c = Config.from_buffer_copy(config)
    elif config is not None:
        config = dict(config)
        unknown = set(config) - set(CONFIG_KEYS)
        if unknown:
            raise TypeError("unknown config keys %s (known: %s)" % (sorted(unknown), ", ".join(CONFIG_KEYS)))
        if "d_model" in config and "dt_rank" not in config:
            c.dt_rank = 0  # derived from d_model
        for k, v in config.items():
            if k == "norm":
                if v not in NORMS:
                    raise ValueError("config norm must be one of %s, not %r" % (", ".join(NORMS), v))
                v = NORMS.index(v)
            elif k == "untied_head":
                if not isinstance(v, (bool, int, np.integer)) or int(v) not in (0, 1):
                    raise TypeError("config untied_head must be True or False, not %r" % (v,))
                v = int(v)
            elif isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError("config %s must be an int, not %r" % (k, v))
            if not -2**31 <= int(v) < 2**31:
                raise ValueError("config %s = %d is out of range" % (k, v))
            setattr(c, k, int(v))
    _check(lib.mb_config_validate(ctypes.byref(c)), "config")
    return c


def _config_dict(c):
    d = {k: int(getattr(c, k)) for k in CONFIG_KEYS}
    d["norm"], d["untied_head"] = NORMS[d["norm"]], bool(d["untied_head"])
    return d


def _tensor_table(c):
    n = lib.mb_config_tensors(ctypes.byref(c), None)
    table = (TensorInfo * n)()
    lib.mb_config_tensors(ctypes.byref(c), table)
    return [(t.name.decode(), int(t.offset), tuple(int(t.shape[i]) for i in range(t.ndim))) for t in table]


def _infer_config(d):
    """The config from a state_dict's shapes (PyTorch names of the checkpoint)."""
    def shape(name):
        if name not in d:
            raise KeyError("state_dict has no %r: cannot infer the config (pass config=...)" % name)
        return tuple(np.shape(d[name]))
    V, C = shape("embedding.weight")
    n_layer = 0
    while "layers.%d.norm.weight" % n_layer in d:
        n_layer += 1
    if n_layer == 0:
        raise KeyError("state_dict has no layers.0.*: cannot infer the config")
    two_di, c2 = shape("layers.0.mixer.in_proj.weight")
    if c2 != C or two_di % (2 * C):
        raise ValueError("layers.0.mixer.in_proj.weight %s does not fit d_model %d" % ((two_di, c2), C))
    di = two_di // 2
    return {"vocab_size": V, "d_model": C, "n_layer": n_layer, "d_state": shape("layers.0.mixer.A_log")[1],
            "d_conv": shape("layers.0.mixer.conv1d.weight")[2], "expand": di // C,
            "dt_rank": shape("layers.0.mixer.dt_proj.weight")[1],
            "norm": "layernorm" if "layers.0.norm.bias" in d else "rmsnorm", "untied_head": "lm_head.weight" in d}


class _Owned:
    """A C object this Python object frees: close() now, or when garbage-collected.
    The handle is self._h; self._s gives it, or a clear error once closed."""
    _free = _what = None  # the library's free function's name, and what the object is, set by each subclass
    _h = ctypes.c_void_p()

    @property
    def _s(self):
        if not self._h.value:
            raise ValueError("the %s is closed" % self._what)
        return self._h

    def close(self):
        """Frees the C object now (else when garbage-collected); closing twice is harmless."""
        if self._h.value:
            getattr(lib, self._free)(self._h)
            self._h = ctypes.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Model(_Owned):
    """A MambaByte model held by the C library (float32 parameters).

    Make one with Model.create, Model.load, Model.from_state_dict,
    Model.from_torch or mambabyte.train."""
    _free, _what = "mb_model_free", "model"

    def __init__(self, handle):
        if not handle:
            raise ValueError("Model() takes a C handle: use Model.create, Model.load or mambabyte.train")
        self._h = ctypes.c_void_p(handle)
        self.train_report = None  # set by mambabyte.train

    # ---------------------------------------------------------- making one
    @classmethod
    def create(cls, config=None, seed=1337):
        """A freshly initialised model.  config: a dict of any of vocab_size,
        d_model, n_layer, d_state, d_conv, expand, dt_rank, norm ("layernorm"
        or "rmsnorm"), untied_head (the rest are seed 000's: 256, 192, 4, 16,
        4, 2, dt_rank ceil(d_model/16), LayerNorm, a tied head); seed as
        `mambabyte train --seed` (the same seed gives the same weights)."""
        c = _config_struct(config)
        h = ctypes.c_void_p()
        _check(lib.mb_model_create(ctypes.byref(h), ctypes.byref(c), ctypes.c_uint64(int(seed))), "create")
        return cls(h.value)

    @classmethod
    def load(cls, path):
        """Loads any checkpoint (with or without training state), or a
        mamba_ssm .safetensors file (mb_model_load); a bad file raises
        MambaByteError naming the file and what is wrong."""
        h = ctypes.c_void_p()
        _check(lib.mb_model_load(ctypes.byref(h), _path(path)))
        return cls(h.value)

    def save(self, path):
        """Writes the weights atomically (temporary file, fsync, rename), no training state."""
        _check(lib.mb_model_save(self._handle(), _path(path)))

    def _handle(self):
        return self._s

    # ---------------------------------------------------------- properties
    @property
    def config(self):
        """The config as a dict (vocab_size, d_model, n_layer, d_state, d_conv, expand, dt_rank, norm, untied_head)."""
        return _config_dict(lib.mb_model_config(self._handle()).contents)

    @property
    def num_params(self):
        return int(lib.mb_model_num_params(self._handle()))

    def __repr__(self):
        c = self.config
        return "<mambabyte.Model d_model %d, %d layers, d_state %d: %d parameters>" % (
            c["d_model"], c["n_layer"], c["d_state"], self.num_params)

    def _params(self):
        """The live flat parameter block as a numpy view (checkpoint order)."""
        return np.ctypeslib.as_array(lib.mb_model_params(self._handle()), shape=(self.num_params,))

    # ---------------------------------------------------------- state dicts
    def state_dict(self):
        """{name: numpy float32 array}: a copy of every parameter, with the
        checkpoint's PyTorch names and shapes, in checkpoint order."""
        flat = self._params()
        c = lib.mb_model_config(self._handle()).contents
        out = {}
        for name, off, shape in _tensor_table(c):
            n = int(np.prod(shape))
            out[name] = flat[off:off + n].reshape(shape).copy()
        return out

    @classmethod
    def from_state_dict(cls, d, config=None):
        """A model holding the tensors of d ({name: array-like}, e.g. from
        state_dict() or a PyTorch state_dict).  The config is inferred from
        the shapes unless given.  Every name must be present with its exact
        shape, nothing else may be, and every value must be finite."""
        d = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in dict(d).items()}
        m = cls.create(config if config is not None else _infer_config(d), seed=0)
        c = lib.mb_model_config(m._handle()).contents
        table = _tensor_table(c)
        extra = set(d) - {t[0] for t in table}
        if extra:
            raise KeyError("unexpected tensors in the state_dict: %s" % sorted(extra)[:8])
        flat = m._params()
        for name, off, shape in table:
            if name not in d:
                raise KeyError("the state_dict lacks %r" % name)
            a = np.asarray(d[name], dtype=np.float32)
            if a.shape != shape:
                raise ValueError("%s has shape %s, the config needs %s" % (name, a.shape, shape))
            if not np.all(np.isfinite(a)):
                raise ValueError("%s holds NaN or Inf" % name)
            flat[off:off + a.size] = a.reshape(-1)
        return m

    def to_torch(self):
        """A torch.nn.Module (mambabyte.torch_model.MambaByte) with these
        weights: the checkpoint's parameter names, and a forward(idx) ->
        logits in PyTorch (a plain sequential scan: a reference, not fast).
        Needs PyTorch."""
        from .torch_model import MambaByte
        return MambaByte.from_model(self)

    @classmethod
    def from_torch(cls, module_or_state_dict, config=None):
        """From a torch.nn.Module whose state_dict has the checkpoint's names,
        or from such a state_dict."""
        sd = module_or_state_dict.state_dict() if hasattr(module_or_state_dict, "state_dict") else module_or_state_dict
        return cls.from_state_dict(sd, config)

    # ---------------------------------------------------------- inference
    def forward(self, inputs):
        """Logits (B, T, 256) of the parallel forward over inputs: bytes (one
        sequence) or a (B, T) uint8 array."""
        if isinstance(inputs, (bytes, bytearray, str)):
            x = np.frombuffer(_as_bytes(inputs), dtype=np.uint8).reshape(1, -1)
        else:
            x = np.asarray(inputs)
            if x.ndim != 2 or (x.size and (x.min() < 0 or x.max() > 255)):
                raise ValueError("inputs must be bytes or a (B, T) array of byte values")
            x = x.astype(np.uint8)
        x = np.ascontiguousarray(x)
        B, T = x.shape
        if B < 1 or T < 1:
            raise ValueError("inputs must not be empty")
        _check(lib.mb_model_forward(self._handle(), x.ctypes.data, None, B, T, None), "forward")
        return np.ctypeslib.as_array(lib.mb_model_logits(self._handle()), shape=(B, T, 256)).copy()

    def stream(self, precision="fp32"):
        """A Stream: O(1) state per byte, logits equal to forward()'s bit for
        bit at "fp32"; "bf16" or "int8" store its matrices in fewer bytes."""
        return Stream(self, precision)

    def streams(self, k, precision="fp32"):
        """Streams: k independent streams stepped together (each weight read
        once per step of them all); each one's logits equal a Stream's bit for bit."""
        return Streams(self, k, precision)

    def generate(self, prompt=b"", n=200, temperature=1.0, top_k=0, seed=0, precision="fp32", draft=None, draft_len=0):
        """n bytes sampled after prompt (bytes or str), as `mambabyte sample`
        (mb_stream_generate): the stream starts with one 0x00 byte, the
        prompt is prefilled, then each byte is drawn with mb_sample_byte
        (temperature 0: greedy; top_k 0: all bytes) from an RNG seeded with
        seed.  Returns the new bytes only; the same arguments give the same
        bytes.  draft (a smaller Model, "lookup", or "self:int8"/"self:bf16":
        this model's weights in fewer bytes): speculative generation
        (mb_stream_generate_spec, at most draft_len bytes a round, 0: 8):
        greedy gives the same bytes, sampling the same distribution."""
        p = bytes(_as_bytes(prompt, "prompt"))
        if n < 0:
            raise ValueError("n must be >= 0")
        if not 0 <= int(top_k) <= 256:
            raise ValueError("top_k must be in [0, 256]")
        s = self.stream(precision)
        rng = ctypes.c_uint64(int(seed) & (2**64 - 1))
        out = ctypes.create_string_buffer(max(int(n), 1))
        if draft is None:
            _check(lib.mb_stream_generate(s._s, p, len(p), int(n), float(temperature), int(top_k), ctypes.byref(rng), out,
                                          None, None, None), "generate")
            return out.raw[:int(n)]
        if draft not in ("lookup", "self:int8", "self:bf16") and not isinstance(draft, Model):
            raise ValueError('draft must be a Model, "lookup", "self:int8" or "self:bf16"')
        ds = draft.stream() if isinstance(draft, Model) else self.stream(draft[5:]) if draft != "lookup" else None
        o = SpecOptions(draft=ds._s.value if ds else None, draft_len=int(draft_len))
        _check(lib.mb_stream_generate_spec(s._s, p, len(p), int(n), float(temperature), int(top_k), ctypes.byref(rng), out,
                                           None, None, None, ctypes.byref(o)), "generate")
        return out.raw[:int(n)]

    def evaluate(self, text, chars=60000, exact=False, precision="fp32"):
        """The WikiText char-level protocol over the first `chars` characters
        of text (bytes or str; chars < 0: all), as `mambabyte eval`.  Returns
        a dict: chars, char_accuracy, bits_per_byte, byte_accuracy, and with
        exact=True also exact_char_accuracy (mb_eval_text_exact); precision:
        the stream's weights, "fp32", "bf16" or "int8"."""
        from ._lib import EvalExactResult, EvalResult
        prec = _precision(precision)
        data = _as_bytes(text, "text")
        arr, ptr = _buffer(data)
        if exact:
            r = EvalExactResult()
            _check(lib.mb_eval_text_exact_ex(self._handle(), prec, ptr, len(data), int(chars), ctypes.byref(r), None, None), "eval")
            base = r.base
        else:
            base = EvalResult()
            _check(lib.mb_eval_text_ex(self._handle(), prec, ptr, len(data), int(chars), ctypes.byref(base), None, None), "eval")
        n, nb = max(base.chars, 1), max(base.bytes, 1)
        out = {"chars": int(base.chars), "char_accuracy": base.chars_correct / n, "bits_per_byte": base.nll_bits / nb,
               "byte_accuracy": base.bytes_correct / nb}
        if exact:
            out["exact_char_accuracy"] = r.exact_correct / n
            out["exact_multibyte_predictions"] = int(r.exact_multibyte)
        return out


def _precision(name):
    from ._lib import PRECISIONS
    if name not in PRECISIONS:
        raise ValueError("precision must be one of %s, not %r" % (", ".join(PRECISIONS), name))
    return PRECISIONS[name]


def _decode(score):
    return bytes(score.bytes[:score.len]).decode("utf-8")


class Streams(_Owned):
    """k streams over one snapshot of the model (mb_streams)."""
    _free, _what = "mb_streams_free", "streams object"

    def __init__(self, model, k, precision="fp32"):
        self.model, self.k = model, int(k)
        h = ctypes.c_void_p()
        _check(lib.mb_streams_create(ctypes.byref(h), model._handle(), self.k, _precision(precision)), "streams")
        self._h = h

    def step(self, data, which=None):
        """Advances streams `which` (default all k, in order) by one byte each
        (data: bytes or a sequence of ints, one per stream); returns their
        next-byte logits, ndarray(len(which), 256)."""
        idx = np.arange(self.k, dtype=np.int32) if which is None else np.ascontiguousarray(which, dtype=np.int32)
        b = np.ascontiguousarray(np.frombuffer(bytes(data), np.uint8) if isinstance(data, (bytes, bytearray)) else data, dtype=np.uint8)
        if b.shape != idx.shape or (idx.size and (idx.min() < 0 or idx.max() >= self.k or len(set(idx.tolist())) != idx.size)):
            raise ValueError("one byte per stream, and distinct stream indices in [0, k)")
        ptr = lib.mb_streams_step(self._s, idx.ctypes.data, b.ctypes.data, int(idx.size))
        return np.ctypeslib.as_array(ptr, shape=(int(idx.size), 256)).copy()

    def feed(self, i, data):
        """Stream i's parallel prefill over data (bytes or str); returns its logits, ndarray(n, 256)."""
        data = _as_bytes(data)
        out = np.empty((len(data), 256), np.float32)
        arr, ptr = _buffer(data)
        _check(lib.mb_streams_feed(self._s, int(i), ptr, len(data), out.ctypes.data), "feed")
        return out

    def reset(self, i):
        """Stream i back to the empty state."""
        lib.mb_streams_reset(self._s, int(i))


class Stream(_Owned):
    """An O(1)-state stream over a model's bytes (mb_stream).  It snapshots
    the model's weights when created.  step/feed return copies of the
    logits; the stream remembers the last ones for predict_char/top_chars."""
    _free, _what = "mb_stream_free", "stream"

    def __init__(self, model, precision="fp32"):
        self.model = model
        h = ctypes.c_void_p()
        _check(lib.mb_stream_create_ex(ctypes.byref(h), model._handle(), _precision(precision)), "stream")
        self._h = h
        self._last = None  # POINTER(c_float) or a float array: the next-byte logits

    def reset(self):
        """Back to the empty state (no byte fed yet)."""
        lib.mb_stream_reset(self._s)
        self._last = None

    def _step_ptr(self, byte):
        b = int(byte)
        if not 0 <= b <= 255:
            raise ValueError("a byte is 0..255, not %d" % b)
        self._last = lib.mb_stream_step(self._s, b)
        return self._last

    def step(self, byte):
        """Feeds one byte (0..255); returns the next byte's logits, ndarray(256)."""
        return np.ctypeslib.as_array(self._step_ptr(byte), shape=(256,)).copy()

    def feed(self, data, logits=True):
        """Feeds bytes (or str, as UTF-8) with the parallel prefill; returns
        the logits after each byte, ndarray(n, 256), equal to n steps' (or
        None with logits=False)."""
        data = _as_bytes(data)
        n = len(data)
        if n == 0:
            return np.zeros((0, 256), np.float32) if logits else None
        arr, ptr = _buffer(data)
        if not logits:  # the state only: the last byte is stepped, for the logits predict_char needs
            if n > 1:
                _check(lib.mb_stream_feed(self._s, ptr, n - 1, None), "feed")
            self._step_ptr(data[-1])
            return None
        out = np.empty((n, 256), np.float32)
        _check(lib.mb_stream_feed(self._s, ptr, n, out.ctypes.data), "feed")
        self._last_rows = out[-1].copy()  # the buffer that _last points into (not the caller's array)
        self._last = self._last_rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        return out

    def copy(self, into=None):
        """A new stream in the same state; or, given into (a Stream of the
        same model config), that stream put into this one's state (no new
        weight snapshot)."""
        s = Stream(self.model) if into is None else into
        _check(lib.mb_stream_copy(s._s, self._s), "copy")
        if self._last is not None:
            buf = (ctypes.c_float * 256)()
            ctypes.memmove(buf, self._last, 256 * 4)
            s._last = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
            s._last_rows = buf
        return s

    def _logits_ptr(self, logits):
        if logits is not None:
            a = np.ascontiguousarray(logits, dtype=np.float32)
            if a.shape != (256,):
                raise ValueError("logits must have shape (256,)")
            self._tmp = a
            return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if self._last is None:
            raise ValueError("no byte has been fed since the stream was created or reset: nothing to predict from")
        return self._last

    def predict_char(self, logits=None):
        """The exact greedy next character (mb_stream_predict_char) and its
        log-probability: the argmax over all characters of the product of
        their UTF-8 bytes' probabilities.  The stream is left unchanged."""
        sc = CharScore()
        _check(lib.mb_stream_predict_char(self._s, self._logits_ptr(logits), ctypes.byref(sc)), "predict")
        return _decode(sc), sc.logp

    def top_chars(self, k=32, logits=None):
        """The k most probable next characters, best first: [(char, logp)]."""
        k = int(k)
        if not 1 <= k <= 65536:
            raise ValueError("k must be in [1, 65536]")
        out = (CharScore * k)()
        _check(lib.mb_stream_top_chars(self._s, self._logits_ptr(logits), k, out), "top_chars")
        return [(_decode(sc), sc.logp) for sc in out]
