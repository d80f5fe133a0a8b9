"""ctypes bindings to libmambabyte.so: the library, its structs and prototypes.

Every Structure here mirrors a struct of mambabyte.h field for field (the
training settings are laid out from the library's own table of them);
python/tests/test_abi.py checks each size and offset against the C
compiler's (build/abi_sizes), so a header change cannot silently break
them.  Nothing here is public API: use the classes in mambabyte.
"""

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int, c_int32,
                    c_int64, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p)

LIBRARY_NAMES = ("libmambabyte_cuda.so", "libmambabyte.so")


# The installed package holds the library built for the baseline x86-64 and for
# these levels (`make lib PORTABLE=1`): the CPU flags each level needs, highest first.
_V3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"}
CPU_LEVELS = (("x86-64-v4", _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}), ("x86-64-v3", _V3))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_levels(flags):
    """The package's library levels this CPU (its /proc/cpuinfo flags) can run, highest first."""
    return [name for name, need in CPU_LEVELS if need <= flags]


def _candidates():
    env = os.environ.get("MAMBABYTE_LIBRARY")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))  # python/mambabyte -> the repository
    dirs = [os.path.join(here, level) for level in cpu_levels(_cpu_flags())] + [here, root]
    return [os.path.join(d, n) for d in dirs for n in LIBRARY_NAMES]


class _Library:
    """The loaded library; functions are looked up (and typed) on first use,
    so a symbol that this build lacks fails only where it is needed."""

    def __init__(self):
        tried, errors = _candidates(), []
        self.cdll = None
        for path in tried:
            if not os.path.exists(path):
                continue
            try:
                self.cdll = ctypes.CDLL(path)
                self.path = path
                break
            except OSError as e:  # e.g. the CUDA build without its runtime: try the next one
                errors.append("%s: %s" % (path, e))
        if self.cdll is None:
            raise ImportError("mambabyte: the C library is not built (looked for %s%s). Run `make lib` in the "
                              "repository root (or set MAMBABYTE_LIBRARY to libmambabyte.so)."
                              % (", ".join(tried), "; " + "; ".join(errors) if errors else ""))
        self.has_cuda = hasattr(self.cdll, "mb_cuda_trainer_attach")

    def has(self, name):
        return hasattr(self.cdll, name)

    def __getattr__(self, name):
        if name not in PROTOTYPES:
            raise AttributeError(name)
        try:
            fn = getattr(self.cdll, name)
        except AttributeError:
            raise NotImplementedError("%s is not in %s (rebuild it with `make lib`)" % (name, self.path)) from None
        fn.restype, fn.argtypes = PROTOTYPES[name]
        setattr(self, name, fn)
        return fn


lib = _Library()


# ------------------------------------------------------------------ structs
class Config(Structure):
    _fields_ = [(n, c_int32) for n in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank",
                                              "norm", "untied_head")]


class TensorInfo(Structure):
    _fields_ = [("name", c_char * 64), ("offset", c_int64), ("numel", c_int64), ("ndim", c_int),
                ("shape", c_int64 * 3), ("weight_decay", c_int)]


class TrainFieldInfo(Structure):
    _fields_ = [("flag", c_char_p), ("key", c_char_p), ("kind", c_int), ("lo", c_double), ("hi", c_double),
                ("help", c_char_p), ("offset", c_int64)]


# mb_field_kind, and the C type of a settings field of each kind
KIND_INT, KIND_NUM, KIND_SWITCH, KIND_SCHEDULE = 0, 1, 2, 3
_KIND_CTYPES = {KIND_INT: c_int64, KIND_NUM: c_double, KIND_SWITCH: c_int32, KIND_SCHEDULE: c_int32}


def _train_fields():
    """The library's table of training fields (mb_train_field_count / _desc)."""
    desc = lib.cdll.mb_train_field_desc
    desc.restype, desc.argtypes = POINTER(TrainFieldInfo), [c_int]
    return [desc(f).contents for f in range(lib.cdll.mb_train_field_count())]


FIELD_COUNT = len(_train_fields())


class TrainSettings(Structure):
    """mb_train_settings, laid out from the library's table: its fields with
    an offset, in order, typed by kind (checked below and by test_abi.py)."""
    _fields_ = [(d.key.decode(), _KIND_CTYPES[d.kind]) for d in _train_fields() if d.offset >= 0]


for _d in _train_fields():
    if _d.offset >= 0 and getattr(TrainSettings, _d.key.decode()).offset != _d.offset:
        raise ImportError("mambabyte: %s puts mb_train_settings.%s at offset %d, ctypes at %d"
                          % (lib.path, _d.key.decode(), _d.offset, getattr(TrainSettings, _d.key.decode()).offset))


class TrainState(Structure):
    _fields_ = [("step", c_int64), ("data_rng", c_uint64), ("data_pos", c_int64), ("elapsed_s", c_double),
                ("ranks", c_int32), ("adam_m", POINTER(c_float)), ("adam_v", POINTER(c_float)), ("settings", TrainSettings),
                ("carry", POINTER(c_float))]


class Batcher(Structure):
    _fields_ = [("data", c_void_p), ("size", c_int64), ("rng", c_uint64), ("pos", c_int64), ("sequential", c_int)]


class StepResult(Structure):
    _fields_ = [("loss", c_float), ("grad_norm", c_double), ("lr", c_double), ("applied", c_int)]


class TrainBackend(Structure):  # function pointers kept opaque: Python never calls them
    _fields_ = [("name", c_char_p), ("impl", c_void_p), ("step", c_void_p), ("sync", c_void_p),
                ("release", c_void_p), ("last_error", c_void_p)]


class Trainer(Structure):
    _fields_ = [("model", c_void_p), ("st", TrainState), ("batcher", Batcher), ("inputs", c_void_p),
                ("targets", c_void_p), ("backend", TrainBackend), ("comm", c_void_p), ("grad_acc", c_void_p),
                ("comm_s", c_double), ("inject_nonfinite_step", c_int64),
                ("inject_nonfinite_from", c_int64), ("carry_mb", c_void_p)]


class TrainProgress(Structure):
    _fields_ = [("step", c_int64), ("steps", c_int64), ("loss", c_float), ("lr", c_double), ("grad_norm", c_double),
                ("tokens_per_s", c_double), ("elapsed_s", c_double), ("eta_s", c_double), ("progress", c_double),
                ("by_time", c_int), ("applied", c_int), ("nonfinite_run", c_int), ("saves", c_int)]


TRAIN_CALLBACK = CFUNCTYPE(c_int, c_void_p, POINTER(TrainProgress))


class TrainOptions(Structure):
    _fields_ = [("out", c_char_p), ("stop_at", c_int64), ("callback", TRAIN_CALLBACK), ("user", c_void_p)]


class TrainReport(Structure):
    _fields_ = [("outcome", c_int), ("steps_run", c_int64), ("elapsed_s", c_double), ("tokens_per_s", c_double),
                ("last_loss", c_float), ("saved", c_int), ("comm_s", c_double), ("tokens", c_double)]


class MappedFile(Structure):
    _fields_ = [("data", c_void_p), ("size", c_int64), ("map_base", c_void_p), ("map_len", c_size_t)]


class Dataset(Structure):
    _fields_ = [("train_file", MappedFile), ("eval_file", MappedFile), ("train", c_void_p), ("eval", c_void_p),
                ("train_size", c_int64), ("eval_size", c_int64), ("eval_is_tail", c_int),
                ("train_path", c_char * 4096), ("eval_path", c_char * 4096)]


class EvalResult(Structure):
    _fields_ = [("chars", c_int64), ("chars_correct", c_int64), ("bytes", c_int64), ("bytes_correct", c_int64),
                ("nll_bits", c_double)]


class CharScore(Structure):
    _fields_ = [("bytes", c_uint8 * 4), ("len", c_int32), ("logp", c_double)]


class SpecOptions(Structure):
    _fields_ = [("draft", c_void_p), ("draft_len", c_int), ("fixed", c_int), ("lookup_min", c_int),
                ("rounds", c_int64), ("drafted", c_int64), ("accepted", c_int64)]


class EvalExactResult(Structure):
    _fields_ = [("base", EvalResult), ("exact_correct", c_int64), ("exact_multibyte", c_int64),
                ("exact_multibyte_correct", c_int64), ("search_steps", c_int64)]


# The mirrors above by their C names (for the ABI test).
STRUCTS = {
    "mb_config": Config, "mb_spec_options": SpecOptions, "mb_tensor_info": TensorInfo, "mb_train_settings": TrainSettings,
    "mb_train_state": TrainState, "mb_batcher": Batcher, "mb_step_result": StepResult,
    "mb_train_backend": TrainBackend, "mb_trainer": Trainer, "mb_train_progress": TrainProgress,
    "mb_train_options": TrainOptions, "mb_train_report": TrainReport, "mb_train_field_info": TrainFieldInfo,
    "mb_mapped_file": MappedFile, "mb_dataset": Dataset, "mb_eval_result": EvalResult,
    "mb_char_score": CharScore, "mb_eval_exact_result": EvalExactResult,
}

# mb_status, mb_train_outcome
STATUS_OK = 0
PRECISIONS = {"fp32": 0, "bf16": 1, "int8": 3}  # a stream's stored weights (MB_PRECISION_*)
OUTCOMES = ("finished", "time_budget", "stop_at", "interrupted", "non_finite", "failed")

P = c_void_p  # opaque pointers (mb_model *, mb_stream *)
PROTOTYPES = {
    "mb_status_string": (c_char_p, [c_int]),
    "mb_last_error": (c_char_p, []),
    "mb_config_default": (Config, []),
    "mb_config_validate": (c_int, [POINTER(Config)]),
    "mb_config_tensors": (c_int, [POINTER(Config), POINTER(TensorInfo)]),
    "mb_config_num_params": (c_int64, [POINTER(Config)]),
    "mb_model_create": (c_int, [POINTER(P), POINTER(Config), c_uint64]),
    "mb_model_load": (c_int, [POINTER(P), c_char_p]),
    "mb_model_save": (c_int, [P, c_char_p]),
    "mb_model_free": (None, [P]),
    "mb_model_config": (POINTER(Config), [P]),
    "mb_model_num_params": (c_int64, [P]),
    "mb_model_params": (POINTER(c_float), [P]),
    "mb_model_forward": (c_int, [P, c_void_p, c_void_p, c_int, c_int, POINTER(c_float)]),
    "mb_model_logits": (POINTER(c_float), [P]),
    "mb_stream_create": (c_int, [POINTER(P), P]),
    "mb_stream_create_ex": (c_int, [POINTER(P), P, c_int]),
    "mb_streams_create": (c_int, [POINTER(P), P, c_int, c_int]),
    "mb_streams_step": (POINTER(c_float), [P, c_void_p, c_void_p, c_int]),
    "mb_streams_feed": (c_int, [P, c_int, c_void_p, c_int64, c_void_p]),
    "mb_streams_reset": (None, [P, c_int]),
    "mb_streams_free": (None, [P]),
    "mb_stream_reset": (None, [P]),
    "mb_stream_step": (POINTER(c_float), [P, c_uint8]),
    "mb_stream_feed": (c_int, [P, c_void_p, c_int64, c_void_p]),
    "mb_stream_copy": (c_int, [P, P]),
    "mb_stream_free": (None, [P]),
    "mb_stream_predict_char": (c_int, [P, POINTER(c_float), POINTER(CharScore)]),
    "mb_stream_top_chars": (c_int, [P, POINTER(c_float), c_int, POINTER(CharScore)]),
    "mb_sample_byte": (c_int, [POINTER(c_float), c_double, c_int, POINTER(c_uint64)]),
    "mb_trainer_describe": (c_int, [c_char_p, c_size_t, POINTER(Trainer), c_char_p]),
    "mb_train_settings_for_budget": (c_int, [POINTER(TrainSettings), c_uint32, c_char_p, c_size_t]),
    "mb_train_report_describe": (c_int, [c_char_p, c_size_t, POINTER(Trainer), POINTER(TrainReport)]),
    "mb_dataset_describe": (c_int, [c_char_p, c_size_t, POINTER(Dataset)]),
    "mb_eval_describe": (c_int, [c_char_p, c_size_t, c_char_p, POINTER(EvalExactResult), c_int, c_double]),
    "mb_stream_generate": (c_int, [P, c_void_p, c_int64, c_int64, c_double, c_int, POINTER(c_uint64), c_void_p,
                                   c_void_p, c_void_p, POINTER(c_int64)]),
    "mb_stream_generate_spec": (c_int, [P, c_void_p, c_int64, c_int64, c_double, c_int, POINTER(c_uint64), c_void_p,
                                        c_void_p, c_void_p, POINTER(c_int64), POINTER(SpecOptions)]),
    "mb_train_settings_default": (TrainSettings, []),
    "mb_train_field_count": (c_int, []),
    "mb_train_field_desc": (POINTER(TrainFieldInfo), [c_int]),
    "mb_train_field_get": (c_double, [POINTER(TrainSettings), POINTER(Config), c_int]),
    "mb_train_field_set": (c_int, [POINTER(TrainSettings), POINTER(Config), c_int, c_double]),
    "mb_train_progress_line": (c_int, [c_char_p, c_size_t, POINTER(TrainProgress)]),
    "mb_model_set_precision": (c_int, [P, c_int]),
    "mb_model_precision": (c_int, [P]),
    "mb_model_precision_describe": (c_char_p, [P]),
    "mb_trainer_init": (c_int, [POINTER(Trainer), P, POINTER(TrainSettings), c_void_p, c_int64, c_void_p]),
    "mb_trainer_free": (None, [POINTER(Trainer)]),
    "mb_train_run": (c_int, [POINTER(Trainer), POINTER(TrainOptions), POINTER(TrainReport)]),
    "mb_dataset_open": (c_int, [POINTER(Dataset), c_char_p, c_char_p]),
    "mb_dataset_close": (None, [POINTER(Dataset)]),
    "mb_utf8_char_len": (c_int, [c_void_p, c_int64]),
    "mb_eval_text": (c_int, [P, c_void_p, c_int64, c_int64, POINTER(EvalResult), c_void_p, c_void_p]),
    "mb_eval_text_exact": (c_int, [P, c_void_p, c_int64, c_int64, POINTER(EvalExactResult), c_void_p, c_void_p]),
    "mb_eval_text_ex": (c_int, [P, c_int, c_void_p, c_int64, c_int64, POINTER(EvalResult), c_void_p, c_void_p]),
    "mb_eval_text_exact_ex": (c_int, [P, c_int, c_void_p, c_int64, c_int64, POINTER(EvalExactResult), c_void_p, c_void_p]),
    "mb_clock_seconds": (c_double, []),
    # only in libmambabyte_cuda.so
    "mb_cuda_device_count": (c_int, []),
    "mb_cuda_last_error": (c_char_p, []),
    "mb_cuda_trainer_attach": (c_int, [POINTER(Trainer), c_int]),
}


