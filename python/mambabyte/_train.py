"""mambabyte.train: the library's training loop (mb_train_run) from Python."""

import ctypes
import os
import signal
import sys
import threading
import time

import numpy as np

from ._core import MambaByteError, Model, _as_bytes, _buffer, _check, _config_dict, _path
from ._lib import (FIELD_COUNT, KIND_INT, KIND_NUM, KIND_SCHEDULE, KIND_SWITCH, OUTCOMES, PRECISIONS,
                   TRAIN_CALLBACK, Config, Dataset, Trainer, TrainOptions, TrainReport, lib)


def training_fields():
    """{keyword: (flag, kind, lo, hi, help)} of every training option and
    model size, from the library's table (mb_train_field_desc): the same
    names, ranges and help as `mambabyte train --help`."""
    out = {}
    for f in range(FIELD_COUNT):
        d = lib.mb_train_field_desc(f).contents
        kind = {KIND_INT: "int", KIND_NUM: "number", KIND_SWITCH: "switch", KIND_SCHEDULE: "schedule"}[d.kind]
        out[d.key.decode()] = (d.flag.decode(), kind, d.lo, d.hi, d.help.decode(), f)
    return out


def _field_value(key, v, spec):
    flag, kind, lo, hi, _help, _f = spec
    if kind == "schedule":
        if v not in ("step", "time"):
            raise ValueError("%s (%s) must be 'step' or 'time', not %r" % (key, flag, v))
        return 1.0 if v == "time" else 0.0
    if kind == "switch":
        if v not in (0, 1, True, False):
            raise ValueError("%s (%s) is a switch: True or False, not %r" % (key, flag, v))
        return 1.0 if v else 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError("%s (%s) must be a number, not %r" % (key, flag, v))
    if kind == "int" and float(v) != int(v):
        raise TypeError("%s (%s) must be an integer, not %r" % (key, flag, v))
    v = float(v)
    if not (lo <= v <= hi):
        raise ValueError("%s (%s) = %g is out of range [%g, %g]" % (key, flag, v, lo, hi))
    return v


class _Interrupt:
    """Ctrl-C during training: a flag the step callback reads (the loop then
    saves and returns); KeyboardInterrupt is raised after that."""

    def __init__(self):
        self.seen = False
        self.old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, sig, frame):
        self.seen = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def _print(msg, verbose):
    if verbose:
        print(msg, flush=True)


def train(data, *, eval_data=None, steps=None, time_budget=None, schedule=None, batch=None, ctx=None, lr=None,
          device="auto", precision="fp32", seed=1337, out=None, callback=None, log_every=10, eval_chars=60000,
          verbose=True, deadline=None, **options):
    """Trains a model with the library's loop (mb_train_run) and returns it.

    data: the training text as bytes (passed to C without a copy), a str
    (encoded once as UTF-8), or a path (os.PathLike: a WikiText folder or
    a file, memory-mapped as `mambabyte train --data` does).
    eval_data: text (bytes, str) or a path to evaluate on after training
    (default: none for bytes/str; a folder's valid split, or a file's last
    5%, for a path); the first eval_chars characters are scored by the
    protocol (eval_chars 0: skip).  The results are in model.train_report.

    The options are those of `mambabyte train` under their keyword names
    (the library's table, mambabyte.training_fields()): steps, time_budget,
    schedule ("step" or "time"), batch, ctx, lr, seed, warmup (default 5%
    of steps, resolved by the library as for C and the CLI), grad_accum, weight_decay, clip, beta1, beta2, eps,
    save_every, sequential, and the model's d_model, n_layer, d_state,
    d_conv, expand.  Unset ones are seed 000's (mb_train_settings_default,
    mb_config_default).  An unknown keyword is a TypeError, a value out of
    range a ValueError.

    device: "auto" (CUDA when this library has it and it works, else the
    CPU with a printed reason), "cpu" or "cuda" (an error when it cannot);
    precision "fp32" or "bf16": bf16 matrix products with float32 sums, on
    the GPU, or on the CPU where it has AMX or AVX512-BF16 (else float32,
    with a printed reason; model.train_report["precision"] says which).
    out: checkpoint path (saved
    atomically at the end and every save_every steps); None: not saved.
    callback(progress: dict) after every step (step, steps, loss, lr,
    grad_norm, tokens_per_s, elapsed_s, eta_s, progress, by_time, applied,
    line: the CLI's progress line); a true return value stops the run
    (saved, outcome "interrupted").  verbose prints the CLI's lines every
    log_every steps.  Ctrl-C finishes the step, saves to out (when given),
    and raises KeyboardInterrupt.

    deadline: a time.monotonic() instant by which training must end: just
    before the loop starts (after the data, the model and the GPU are
    ready) the time budget becomes the time left then, less a second for
    what follows, so train() returns before it."""
    fields = training_fields()
    given = {"steps": steps, "time_budget": time_budget, "schedule": schedule, "batch": batch, "ctx": ctx, "lr": lr,
             "seed": seed}
    given = {k: v for k, v in given.items() if v is not None}
    for k, v in options.items():
        if k not in fields:
            raise TypeError("train() got an unknown option %r (options: %s)" % (k, ", ".join(sorted(fields))))
        given[k] = v
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError("device must be 'auto', 'cpu' or 'cuda', not %r" % (device,))
    if precision not in ("fp32", "bf16"):
        raise ValueError("precision must be 'fp32' or 'bf16', not %r" % (precision,))
    settings, cfg = lib.mb_train_settings_default(), lib.mb_config_default()
    for k, v in given.items():
        spec = fields[k]
        _check(lib.mb_train_field_set(ctypes.byref(settings), ctypes.byref(cfg), spec[5], _field_value(k, v, spec)))
    if deadline is not None:  # a placeholder until the loop starts (below)
        settings.time_budget = max(float(deadline) - time.monotonic(), 0.0) or 1e-3
    why = ctypes.create_string_buffer(512)  # a budget and no lr/batch/ctx: the short-budget recipe, as the CLI
    if lib.mb_train_settings_for_budget(ctypes.byref(settings), sum(1 << fields[k][5] for k in given), why, len(why)):
        _print(why.value.decode(), verbose)
    if settings.schedule == 1 and not settings.time_budget > 0:
        raise ValueError("schedule='time' needs time_budget (seconds)")
    _check(lib.mb_config_validate(ctypes.byref(cfg)), "config")

    # ------------------------------------------------------------ the data
    ds = None
    keep = []  # what the C side points into, alive until the end
    eval_bytes = None
    if isinstance(data, os.PathLike):
        ds = Dataset()
        ev_path = _path(eval_data) if isinstance(eval_data, os.PathLike) else None
        _check(lib.mb_dataset_open(ctypes.byref(ds), _path(data), ev_path), "data")
        ptr, size = ds.train, ds.train_size
        if eval_data is None or ev_path is not None:
            # the CLI's labels: where the evaluated text comes from
            eval_label = ("%s's held-out 5%%" % ds.train_path.decode() if ds.eval_is_tail else
                          "%s (eval_data)" % ds.eval_path.decode() if ev_path else
                          "the valid split (%s)" % ds.eval_path.decode())
            eval_ptr, eval_size = ds.eval, ds.eval_size
        if eval_data is None or ev_path is not None:
            _print(_describe(lib.mb_dataset_describe, ctypes.byref(ds)), verbose)
        else:
            _print("data: training on %s (%d bytes); evaluating on eval_data" % (ds.train_path.decode(), size), verbose)
    else:
        buf = _as_bytes(data)
        arr, ptr = _buffer(buf)
        keep += [buf, arr]
        size = len(buf)
    if eval_data is not None and not isinstance(eval_data, os.PathLike):
        eval_bytes = _as_bytes(eval_data, "eval_data")
        earr, eval_ptr = _buffer(eval_bytes)
        keep += [eval_bytes, earr]
        eval_size, eval_label = len(eval_bytes), "eval_data"
    elif ds is None:
        eval_size = 0
    try:
        if size < settings.ctx + 1:
            raise ValueError("the training data has %d bytes; ctx %d needs at least %d" % (size, settings.ctx,
                                                                                          settings.ctx + 1))
        model = Model.create(_config_dict(cfg), seed=settings.seed)
        tr = Trainer()
        _check(lib.mb_trainer_init(ctypes.byref(tr), model._handle(), ctypes.byref(settings), ptr, size, None), "train")
        try:
            if device != "cpu":
                reason = None
                if not lib.has_cuda:
                    reason = "this library has no CUDA backend (%s; build libmambabyte_cuda.so with `make lib` " \
                             "where nvcc is)" % os.path.basename(lib.path)
                elif lib.mb_cuda_trainer_attach(ctypes.byref(tr), PRECISIONS[precision]) != 0:
                    reason = lib.mb_last_error().decode("utf-8", "replace")
                if reason and device == "cuda":
                    raise MambaByteError(7, reason, "device cuda")
                if reason:
                    _print("note: training on the CPU (%s): %s" % (precision, reason), verbose)
            if not tr.backend.step and precision == "bf16":  # the CPU's bf16 products: which kernel, or why none
                _check(lib.mb_model_set_precision(model._handle(), PRECISIONS["bf16"]), "precision")
                _print("precision: %s" % lib.mb_model_precision_describe(model._handle()).decode(), verbose)
            if deadline is not None:
                left = float(deadline) - time.monotonic() - 1.0
                if left <= 0:
                    raise ValueError("the deadline has passed before training could start")
                tr.st.settings.time_budget = left
            _print(_describe(lib.mb_trainer_describe, ctypes.byref(tr), None), verbose)
            report = _run(tr, out, callback, log_every, verbose)
            if not tr.backend.step:
                report["precision"] = lib.mb_model_precision_describe(model._handle()).decode()
        finally:
            lib.mb_trainer_free(ctypes.byref(tr))
        model.train_report = report
        if eval_size > 0 and eval_chars and report["outcome"] in ("finished", "time_budget"):
            from ._lib import EvalExactResult
            ex = EvalExactResult()
            t0 = time.monotonic()
            _check(lib.mb_eval_text(model._handle(), eval_ptr, eval_size, int(eval_chars), ctypes.byref(ex.base), None,
                                    None), "eval")
            r = ex.base
            n, nb = max(r.chars, 1), max(r.bytes, 1)
            report.update(eval_chars=int(r.chars), char_accuracy=r.chars_correct / n, bits_per_byte=r.nll_bits / nb)
            _print(_describe(lib.mb_eval_describe, eval_label.encode(), ctypes.byref(ex), 0, time.monotonic() - t0),
                   verbose)
    finally:
        if ds is not None:
            lib.mb_dataset_close(ctypes.byref(ds))
    if report.get("interrupted_by_signal"):
        raise KeyboardInterrupt("training interrupted at step %d%s" % (
            report["steps"], "; saved to %s" % out if out else ""))
    return model


def _describe(fn, *args):
    """One of the library's mb_*_describe lines (the CLI prints the same)."""
    buf = ctypes.create_string_buffer(2048)
    fn(buf, len(buf), *args)
    return buf.value.decode("utf-8", "replace")


def _run(tr, out, callback, log_every, verbose):
    """mb_train_run with the progress callback; returns the report dict."""
    state = {"error": None}
    line = ctypes.create_string_buffer(256)
    tty = verbose and sys.stdout.isatty()

    with _Interrupt() as intr:
        def on_step(user, pp):
            try:
                p = pp.contents
                lib.mb_train_progress_line(line, 256, pp)
                text = line.value.decode()
                if not p.applied:
                    _print(text, verbose)
                elif p.step % log_every == 0 or p.step == p.steps:
                    _print(("\r\033[K" if tty else "") + text, verbose)
                stop = False
                if callback is not None:
                    stop = bool(callback({"step": p.step, "steps": p.steps, "loss": p.loss, "lr": p.lr,
                                          "grad_norm": p.grad_norm, "tokens_per_s": p.tokens_per_s,
                                          "elapsed_s": p.elapsed_s, "eta_s": p.eta_s, "progress": p.progress,
                                          "by_time": bool(p.by_time), "applied": bool(p.applied), "line": text}))
                return 1 if stop or intr.seen else 0
            except BaseException as e:  # never across the C frames: stop, and raise after the run
                state["error"] = e
                return 1

        cb = TRAIN_CALLBACK(on_step)
        opt = TrainOptions(_path(out) if out is not None else None, 0, cb, None)
        rep = TrainReport()
        st = lib.mb_train_run(ctypes.byref(tr), ctypes.byref(opt), ctypes.byref(rep))
    outcome = OUTCOMES[rep.outcome] if 0 <= rep.outcome < len(OUTCOMES) else str(rep.outcome)
    report = {"outcome": outcome, "steps": int(tr.st.step), "steps_run": int(rep.steps_run), "elapsed_s": rep.elapsed_s,
              "tokens_per_s": rep.tokens_per_s, "final_loss": rep.last_loss, "saved": bool(rep.saved),
              "device": tr.backend.name.decode(), "interrupted_by_signal": intr.seen}
    if state["error"] is not None and not isinstance(state["error"], KeyboardInterrupt):
        raise state["error"]
    if state["error"] is not None:
        report["interrupted_by_signal"] = True
    _check(st, "train")
    _print(_describe(lib.mb_train_report_describe, ctypes.byref(tr), ctypes.byref(rep)) +
           ("; saved %s" % out if rep.saved else ""), verbose)
    return report
