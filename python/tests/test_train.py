"""mambabyte.train: the library's loop from Python."""
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import mambabyte
from conftest import ROOT, SAMPLE, python_env, run_cli, tiny_options


def test_train_from_bytes_str_and_path_are_the_same_run(tmp_path):
    data = SAMPLE.read_bytes()
    head = data[:len(data) - len(data) // 20]  # a path trains on the first 95% (the rest is held out)
    opts = tiny_options(steps=12)
    a = mambabyte.train(head, **opts)
    b = mambabyte.train(pathlib.Path(SAMPLE), **opts)
    c = mambabyte.train(head.decode("utf-8", "ignore"), **opts)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert a.train_report["outcome"] == "finished" and a.train_report["steps"] == 12
    assert b.train_report["eval_chars"] > 0  # a path is evaluated on its held-out tail
    assert np.isfinite(c.train_report["final_loss"])


def test_train_equals_cli_bit_for_bit(tmp_path):
    """The same settings through `mambabyte train` and mambabyte.train give the same parameters."""
    args = dict(steps=15, batch=3, ctx=48, d_model=24, n_layer=2, d_state=4, lr=3e-3, seed=5)
    flags = []
    for k, v in args.items():
        flags += ["--" + k.replace("_", "-"), str(v)]
    r = run_cli("train", "--data", SAMPLE, "--out", tmp_path / "cli.bin", "--eval-chars", 0, *flags)
    assert r.returncode == 0, r.stderr
    m = mambabyte.train(pathlib.Path(SAMPLE), out=str(tmp_path / "py.bin"), eval_chars=0, verbose=False, **args)
    ref = mambabyte.Model.load(tmp_path / "cli.bin").state_dict()
    got = m.state_dict()
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    assert all(np.array_equal(ref[k], v) for k, v in mambabyte.Model.load(tmp_path / "py.bin").state_dict().items())


def test_carry_state_equals_cli_and_is_saved(tmp_path):
    """carry_state=True is --carry-state: the same parameters, the flag and the carried rows in the checkpoint."""
    args = dict(steps=10, batch=3, ctx=32, d_model=24, n_layer=2, d_state=4, lr=3e-3, seed=7)
    flags = [f for k, v in args.items() for f in ("--" + k.replace("_", "-"), str(v))]
    r = run_cli("train", "--data", SAMPLE, "--out", tmp_path / "cli.bin", "--eval-chars", 0, "--carry-state", *flags)
    assert r.returncode == 0, r.stderr
    m = mambabyte.train(pathlib.Path(SAMPLE), eval_chars=0, verbose=False, carry_state=True, **args)
    plain = mambabyte.train(pathlib.Path(SAMPLE), eval_chars=0, verbose=False, **args)
    ref, got, other = mambabyte.Model.load(tmp_path / "cli.bin").state_dict(), m.state_dict(), plain.state_dict()
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    assert not all(np.array_equal(other[k], got[k]) for k in ref)  # another trajectory than random windows
    header = np.fromfile(tmp_path / "cli.bin", dtype=np.int32, count=16)
    assert header[15] == 3  # the rows whose carried state follows the training state


def test_callback_sees_steps_and_can_stop(tmp_path, capsys):
    seen = []

    def cb(p):
        seen.append(p)
        return p["step"] >= 4

    m = mambabyte.train(SAMPLE.read_bytes(), callback=cb, out=str(tmp_path / "m.bin"), **tiny_options(steps=50))
    assert [p["step"] for p in seen] == [1, 2, 3, 4]
    assert seen[0]["steps"] == 50 and seen[0]["line"].startswith("step 1/50 | loss ")
    assert m.train_report["outcome"] == "interrupted" and m.train_report["saved"]
    assert mambabyte.Model.load(tmp_path / "m.bin").num_params == m.num_params


def test_progress_lines_like_the_cli(capsys):
    mambabyte.train(SAMPLE.read_bytes(), log_every=5, **tiny_options(steps=10, verbose=True))
    out = capsys.readouterr().out
    assert "step 5/10 | loss " in out and "step 10/10 | loss " in out and "tok/s" in out
    assert "model: d_model 32, 2 layers" in out and "done: 10 steps" in out


def test_time_budget_schedule():
    t0 = time.monotonic()
    m = mambabyte.train(SAMPLE.read_bytes(), schedule="time", time_budget=3, **tiny_options(steps=100000))
    assert m.train_report["outcome"] == "time_budget"
    assert time.monotonic() - t0 < 3 + 1.5


def test_callback_exception_propagates():
    def cb(p):
        raise RuntimeError("boom at %d" % p["step"])

    with pytest.raises(RuntimeError, match="boom at 1"):
        mambabyte.train(SAMPLE.read_bytes(), callback=cb, **tiny_options(steps=5))


def test_bad_options():
    data = SAMPLE.read_bytes()
    with pytest.raises(TypeError, match="unknown option 'stepz'"):
        mambabyte.train(data, stepz=3)
    with pytest.raises(ValueError, match=r"batch \(--batch\) = 0 is out of range"):
        mambabyte.train(data, batch=0)
    with pytest.raises(TypeError, match="integer"):
        mambabyte.train(data, steps=2.5)
    with pytest.raises(TypeError, match="number"):
        mambabyte.train(data, lr="fast")
    with pytest.raises(ValueError, match="'step' or 'time'"):
        mambabyte.train(data, schedule="cosine")
    with pytest.raises(ValueError, match="time_budget"):
        mambabyte.train(data, schedule="time")
    with pytest.raises(ValueError, match="device"):
        mambabyte.train(data, device="tpu")
    with pytest.raises(TypeError):
        mambabyte.train(12345)
    assert set(mambabyte.training_fields()) >= {"steps", "time_budget", "d_model", "warmup", "grad_accum"}


def test_warmup_and_dt_rank_follow_the_run(capsys):
    """The library's defaults follow the run, as in C and the CLI: 5% of the steps warm up (not a fixed 200), and
    d_model sets dt_rank."""
    mambabyte.train(SAMPLE.read_bytes(), **tiny_options(steps=30, verbose=True, eval_chars=0))
    assert "warm-up 2 steps, cosine to 0" in capsys.readouterr().out  # floor(0.05 * 30 + 0.5)
    mambabyte.train(SAMPLE.read_bytes(), **tiny_options(steps=30, warmup=7, verbose=True, eval_chars=0))
    assert "warm-up 7 steps" in capsys.readouterr().out
    from mambabyte._lib import lib
    cfg = lib.mb_config_default()
    assert cfg.dt_rank == 0  # derived: ceil(d_model / 16)
    cfg.d_model = 64
    assert mambabyte.Model.create(cfg).config["dt_rank"] == 4


def test_data_shorter_than_ctx():
    with pytest.raises(ValueError, match="needs at least 65"):
        mambabyte.train(b"x" * 64, ctx=64)
    with pytest.raises(mambabyte.MambaByteError, match="cannot open"):
        mambabyte.train(pathlib.Path("/nonexistent/mambabyte-data.txt"))


def test_device_cuda_without_a_gpu():
    if mambabyte.has_cuda():
        pytest.skip("a GPU is present")
    with pytest.raises(mambabyte.MambaByteError):
        mambabyte.train(SAMPLE.read_bytes(), device="cuda", **tiny_options(steps=2))
    m = mambabyte.train(SAMPLE.read_bytes(), device="auto", **tiny_options(steps=2))
    assert m.train_report["device"] == "cpu"


def test_bf16_on_the_cpu(capsys):
    """precision="bf16" on the CPU: the bf16 products where the CPU has them (else float32, said)."""
    opts = tiny_options(steps=20, device="cpu", seed=3)
    a = mambabyte.train(SAMPLE.read_bytes(), precision="fp32", **opts)
    b = mambabyte.train(SAMPLE.read_bytes(), precision="bf16", **dict(opts, verbose=True))
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("precision: ")]
    assert len(line) == 1 and line[0] == "precision: " + b.train_report["precision"]
    assert a.train_report["precision"] == "float32 products"
    sa, sb = a.state_dict(), b.state_dict()
    if b.train_report["precision"].startswith("bf16 products"):
        assert not all(np.array_equal(sa[k], sb[k]) for k in sa)  # other products, other weights ...
        assert abs(a.train_report["final_loss"] - b.train_report["final_loss"]) < 0.05  # ... and the same training
    else:
        assert "no AVX512-BF16 or AMX" in b.train_report["precision"]
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="precision"):
        mambabyte.train(SAMPLE.read_bytes(), precision="tf32", **opts)


def test_ctrl_c_saves_and_raises(tmp_path):
    code = textwrap.dedent('''
        import sys, mambabyte
        def cb(p):
            if p["step"] == 1:
                print("first step", flush=True)
        try:
            mambabyte.train(open(sys.argv[1], "rb").read(), out=sys.argv[2], callback=cb, d_model=32, n_layer=2,
                            d_state=8, batch=2, ctx=64, steps=100000, verbose=False)
        except KeyboardInterrupt as e:
            print("KeyboardInterrupt:", e, flush=True)
            sys.exit(130)
    ''')
    p = subprocess.Popen([sys.executable, "-c", code, str(SAMPLE), str(tmp_path / "m.bin")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=python_env())
    assert p.stdout.readline().strip() == "first step"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "KeyboardInterrupt: training interrupted at step" in out and "saved to" in out
    m = mambabyte.Model.load(tmp_path / "m.bin")  # a complete checkpoint
    assert m.num_params > 0
    r = run_cli("train", "--resume", tmp_path / "m.bin", "--out", tmp_path / "m.bin", "--data", SAMPLE, "--stop-at",
                1000000, "--steps", 100000, "--time-budget", 1, "--eval-chars", 0)
    assert r.returncode == 0, r.stderr  # resumable by the CLI


def test_budget_alone_takes_the_recipe(capsys):
    """A time budget without lr/batch/ctx: the library's short-budget recipe, said in one line, as the CLI."""
    m = mambabyte.train(SAMPLE.read_bytes(), time_budget=1, d_model=16, n_layer=1, eval_chars=0, verbose=True)
    out = capsys.readouterr().out
    assert "time budget 1 s, so --schedule time --lr 0.002 --batch 4 --ctx 256" in out, out
    assert "batch 4 x ctx 256" in out and m.train_report["outcome"] == "time_budget"
    mambabyte.train(SAMPLE.read_bytes(), time_budget=1, d_model=16, n_layer=1, batch=2, eval_chars=0, verbose=True)
    out = capsys.readouterr().out
    assert "--batch 4" not in out and "batch 2 x ctx 256" in out, out  # a given option is kept
