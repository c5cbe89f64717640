"""Issue 4: bad input gets a clear error, a killed run resumes with nothing lost, a broken checkpoint
never ends a run.

The command-line cases run `inception_jax.trainer.main` the way a user does (flag parsing included) and check
the one-line message and the exit status; the interruption cases run the trainer in subprocesses
and kill them with real signals.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from inception_jax.trainer import checkpoint as ckpt_lib  # noqa: E402
from inception_jax.trainer import main as main_lib  # noqa: E402
from inception_jax.trainer import metrics as metrics_lib  # noqa: E402
from inception_jax.trainer import rundir  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DIGITS_CONFIG = os.path.join(REPO, "configs", "digits.py")


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """The built-in dataset, prepared once for this module."""
    from inception_jax.trainer.data import digits

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    digits.ensure_prepared(data_dir)
    return data_dir


def _small_run_flags(workdir, data_dir, total_steps=4):
    return [
        f"--config={DIGITS_CONFIG}",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        f"--config.total_steps={total_steps}",
        "--config.num_epochs=0.0",
        "--config.batch_size=16",
        "--config.eval_batch_size=64",
        "--config.model.width_multiplier=0.125",
        "--config.schedule.warmup_epochs=0.0",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=1",
        "--config.eval_every_steps=1000",
        "--config.progress_bar=False",
    ]


# --- Bad configs: one line naming the field, the value and the fix; exit status 2 -----------------


def _run_cli(argv, monkeypatch, capsys):
    """Runs the CLI in this process; returns (exit status, stderr)."""
    monkeypatch.setattr(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        lambda *a, **k: pytest.fail("the trainer must never start a download"),
    )
    argv = ["inception_jax.trainer.main", *argv]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the --config.* overrides from sys.argv
    main_lib.FLAGS.unparse_flags()
    try:
        rest = main_lib.parse_flags(argv)
        status = main_lib.main(rest)
    except SystemExit as e:
        status = e.code
    finally:  # forget this call's flags: config_flags defines one flag per --config.* override
        main_lib.FLAGS.unparse_flags()
        for name in [n for n in main_lib.FLAGS if n.startswith("config.")]:
            delattr(main_lib.FLAGS, name)
    return status, capsys.readouterr().err


def _conflicting_init_from(tmp_path):
    workdir = tmp_path / "w"
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"init_from": None}))
    return ["--config.init_from=" + str(tmp_path / "other.msgpack")]


BAD_CONFIGS = [
    # (case, extra flags or a function of tmp_path returning them, expected message)
    ("unknown model", ["--config.model.name=inception_v33"], r"Did you mean 'inception_v3'"),
    ("unknown field", ["--config.learning_rate=0.1"], r"learning_rate"),
    (
        "unknown model option",
        ["--config.model.dropout=0.1"],
        r"config.model.dropout .*Did you mean config.model.dropout_rate",
    ),
    (
        "input too small",
        ["--config.input.image_size=8"],
        r"config.input.image_size=8 is below googlenet's minimum input size 15",
    ),
    (
        "batch vs devices",
        ["--config.batch_size=12"],
        r"config.batch_size=12 must be a positive multiple of the device count 8; use 8 or 16",
    ),
    (
        "batch vs micro-batches",
        ["--config.grad_accum_steps=4"],
        r"config.batch_size=16 must be a positive multiple of 32 "
        r"\(the device count 8 x config.grad_accum_steps=4\); use 32 or 64",
    ),
    ("accumulation steps", ["--config.grad_accum_steps=0"], r"config.grad_accum_steps=0 must be a whole number >= 1"),
    (
        "zero learning rate",
        ["--config.schedule.base_learning_rate=0.0"],
        r"config.schedule.base_learning_rate=0.0 must be positive",
    ),
    ("negative steps", ["--config.total_steps=-3"], r"config.total_steps"),
    (
        "no steps at all",
        ["--config.total_steps=0"],
        r"set exactly one of config.total_steps \(0\) and config.num_epochs \(0.0\)",
    ),
    (
        "aux weights vs heads",
        ["--config.model.aux_logits=True", "--config.aux_loss_weights=(0.3,)"],
        r"config.aux_loss_weights=\(0.3,\) has 1 weight\(s\) but googlenet with these options has 2 aux head\(s\)",
    ),
    ("missing aux weights", ["--config.model.aux_logits=True"], r"has 0 weight\(s\) .* 2 aux head\(s\)"),
    (
        "bad model option value",
        ["--config.model.padding_mode=same"],
        r"config.model: googlenet: padding_mode must be 'torch' or 'tf', got 'same'",
    ),
    ("unknown dataset", ["--config.dataset.name=imagenet2013"], r"imagenet2012"),
    ("unprepared dataset", ["--config.dataset.name=mnist"], r"mnist.*(prepare|download)"),
    (
        "bad choice",
        ["--config.optimizer.name=adam"],
        r"config.optimizer.name='adam' is not one of 'rmsprop', 'sgd', 'adamw'",
    ),
    ("workdir not writable", "unwritable", r"--workdir=.* cannot be written"),
    ("resume vs init_from", _conflicting_init_from, r"config.init_from=.* conflicts with the checkpoints already in"),
    ("missing config file", "missing_config", r"nope.py"),
]


@pytest.mark.parametrize("case, extra, message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_configs_exit_2_with_one_line_naming_the_fix(
    case, extra, message, tmp_path, digits_dir, monkeypatch, capsys
):
    workdir = tmp_path / "w"
    argv = _small_run_flags(workdir, digits_dir)
    if extra == "unwritable":
        (tmp_path / "a_file").write_text("")
        argv = [f if not f.startswith("--workdir=") else f"--workdir={tmp_path / 'a_file' / 'run'}" for f in argv]
    elif extra == "missing_config":
        argv = [f if not f.startswith("--config=") else f"--config={tmp_path / 'nope.py'}" for f in argv]
    elif callable(extra):
        argv += extra(tmp_path)
    else:
        argv += extra
    if case == "unprepared dataset":
        argv = [f for f in argv if not f.startswith("--config.dataset.data_dir=")]
        argv.append(f"--config.dataset.data_dir={tmp_path / 'empty'}")
    status, err = _run_cli(argv, monkeypatch, capsys)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert not os.path.isdir(workdir / "checkpoints") or case == "resume vs init_from"


def test_cli_exit_status_in_a_real_process(tmp_path, digits_dir):
    """The same contract through `inception-train`, absl's app.run included."""
    argv = _small_run_flags(tmp_path / "w", digits_dir) + ["--config.model.name=googlenett"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "inception_jax.trainer.main", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_subprocess_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: config.model.name: Unknown model name 'googlenett'. Did you mean 'googlenet'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 120  # fails before any compile (start-up is most of this)


# --- Checkpoint integrity -------------------------------------------------------------------------


def _tree(value: float):
    return {
        "params": {"w": np.full((64, 32), value, np.float32), "b": np.arange(32, dtype=np.float32) * value},
        "step": np.asarray(int(value), np.int32),
    }


def _abstract():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _tree(0.0))


def _three_checkpoints(workdir) -> ckpt_lib.Checkpointer:
    c = ckpt_lib.Checkpointer(str(workdir), max_to_keep=5)
    for step in (1, 2, 3):
        c.save(step, _tree(float(step)), {"step": step})
        c.wait()
    c.close()
    return ckpt_lib.Checkpointer(str(workdir), max_to_keep=5)


def _files(step_dir):
    return sorted((os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs), key=lambda p: -os.path.getsize(p))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(np.random.default_rng(0).integers(0, 256, max(1, size // 3), dtype=np.uint8).tobytes())


def _array_file(step_dir):
    return _files(os.path.join(step_dir, "state"))[0]  # the largest file under state/ holds the arrays


@pytest.mark.parametrize("damage", ["truncate_arrays", "garble_arrays", "garble_meta", "missing_arrays"])
def test_damaged_checkpoint_is_reported_and_the_previous_one_restored(damage, tmp_path, caplog):
    c = _three_checkpoints(tmp_path)
    step3 = os.path.join(c.directory, "3")
    if damage == "truncate_arrays":
        _truncate(_array_file(step3))
    elif damage == "garble_arrays":
        _garble(_array_file(step3))
    elif damage == "garble_meta":
        _garble(os.path.join(step3, "meta", "metadata"))
    else:
        for path in _files(os.path.join(step3, "state")):  # every data file of the key-value store
            if os.path.basename(os.path.dirname(path)) == "d":
                os.remove(path)
    step, state, meta = c.restore_latest(_abstract())
    c.close()
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), _tree(2.0)["params"]["w"])
    assert c.skipped == [3]
    assert "checkpoint at step 3" in caplog.text and "cannot be restored" in caplog.text


def test_a_garbled_array_is_caught_by_the_digest_even_if_the_format_reads_it(tmp_path):
    """Flip one value in the restored state: orbax reads it happily, the saved digest does not match."""
    host = _tree(1.0)
    digest = ckpt_lib.state_digest(host)
    host["params"]["w"][3, 5] = 7.0
    with pytest.raises(ckpt_lib.CorruptCheckpointError, match="differs"):
        ckpt_lib._check_digest(host, {"digest": digest})


def test_a_torn_save_is_ignored_and_cleaned_up(tmp_path):
    """A save killed mid-write leaves orbax's temporary directory, never a step directory."""
    c = _three_checkpoints(tmp_path)
    torn = os.path.join(c.directory, "4.orbax-checkpoint-tmp-1234567890")
    os.makedirs(os.path.join(torn, "state"))
    with open(os.path.join(torn, "state", "partial"), "wb") as f:
        f.write(b"\0" * 100)
    c.close()
    c = ckpt_lib.Checkpointer(str(tmp_path), max_to_keep=5)
    assert c.latest_step() == 3
    step, _, _ = c.restore_latest(_abstract())
    c.close()
    assert step == 3 and not os.path.exists(torn)


def test_every_checkpoint_damaged_starts_from_scratch(tmp_path):
    c = _three_checkpoints(tmp_path)
    for step in (1, 2, 3):
        _truncate(_array_file(os.path.join(c.directory, str(step))))
    assert c.restore_latest(_abstract()) is None
    assert c.skipped == [3, 2, 1]
    c.close()


def test_a_failed_write_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path):
    """A real write failure: the file-size limit makes the OS refuse the write (EFBIG), as a full disk
    would (ENOSPC). Python ignores SIGXFSZ, so the failure arrives as an error, not a signal."""
    c = ckpt_lib.Checkpointer(str(tmp_path), max_to_keep=5)
    c.save(1, _tree(1.0), {"step": 1})
    c.wait()
    incompressible = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    big = {"params": {"w": incompressible, "b": np.zeros(32, np.float32)}, "step": np.asarray(2, np.int32)}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(ckpt_lib.CheckpointWriteError) as info:
            c.save(2, big, {"step": 2})
            c.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(info.value)
    assert "at step 2" in message or "writing a checkpoint to" in message
    assert "the earlier checkpoints (steps [1]) are intact" in message
    assert "re-run the same command to resume" in message
    c.close()  # the failure is reported once; closing does not raise it again
    c = ckpt_lib.Checkpointer(str(tmp_path), max_to_keep=5)
    step, state, _ = c.restore_latest(_abstract())
    c.close()
    assert step == 1
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), _tree(1.0)["params"]["w"])


# --- Interruptions: real signals to real processes ------------------------------------------------


def _subprocess_env(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one CPU device (conftest's compile level)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # conftest's cache: later runs skip compiles
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _logged_step(workdir) -> int:
    try:
        return max((r["step"] for r in rundir.read_metrics(str(workdir)) if "train/loss" in r), default=0)
    except ValueError:  # a line being written right now
        return 0


def _start(workdir, data_dir, tmp_path, total_steps):
    argv = _small_run_flags(workdir, data_dir, total_steps) + ["--config.model.width_multiplier=0.0625"]
    return subprocess.Popen(
        [sys.executable, "-m", "inception_jax.trainer.main", *argv],
        cwd=REPO,
        env=_subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(proc, workdir, step, timeout=300):
    t0 = time.monotonic()
    while _logged_step(workdir) < step:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}:\n{proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"no step {step} within {timeout}s")
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_and_resumed_runs_end_exactly_as_an_uninterrupted_one(tmp_path, digits_dir):
    """SIGKILL during start-up, SIGKILL mid-training, SIGINT, then a run to the end: parameters,
    BatchNorm statistics and metrics equal an uninterrupted run's, bitwise (perf/* are wall-clock)."""
    total = 12  # each step also writes a checkpoint (~0.5 s here), so SIGTERM lands before the end
    ref = tmp_path / "ref"
    proc = _start(ref, digits_dir, tmp_path, total)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    work = tmp_path / "work"
    proc = _start(work, digits_dir, tmp_path, total)  # killed while starting up: nothing saved yet
    time.sleep(3)
    proc.kill()
    proc.wait()

    proc = _start(work, digits_dir, tmp_path, total)  # killed mid-training, maybe mid-save
    _wait_for_step(proc, work, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    proc = _start(work, digits_dir, tmp_path, total)  # Ctrl-C: saves and exits 0 (SIGTERM: test_train)
    resumed_from = _logged_step(work)
    _wait_for_step(proc, work, resumed_from + 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    stopped_at = _logged_step(work)
    assert stopped_at < total, "SIGINT arrived after the run finished; the test needs more steps"
    assert "received signal 2" in out
    assert ckpt_lib.Checkpointer(str(work)).latest_step() == stopped_at

    proc = _start(work, digits_dir, tmp_path, total)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    a, b = ckpt_lib.load_init_variables(str(ref)), ckpt_lib.load_init_variables(str(work))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]
    ref_metrics, work_metrics = strip(rundir.read_metrics(str(ref))), strip(rundir.read_metrics(str(work)))
    assert [r["step"] for r in work_metrics] == [r["step"] for r in ref_metrics]
    assert work_metrics == ref_metrics


def test_resume_rewrites_each_metrics_record_once_and_hides_stale_tensorboard_steps(tmp_path):
    """After a kill, records past the restored step (and a torn last line) are dropped; TensorBoard
    is told to hide its events from the restored step on, via the event file's purge marker."""
    first = metrics_lib.MetricWriter(str(tmp_path))
    for step in range(1, 6):
        first.write(step, {"train/loss": float(step)})
    first.close()
    with open(tmp_path / rundir.METRICS_FILE, "a") as f:
        f.write('{"step": 6, "train/lo')  # killed mid-write

    resumed = metrics_lib.MetricWriter(str(tmp_path))
    resumed.truncate_after(3)
    resumed.write(4, {"train/loss": 40.0})
    assert resumed._tb.purge_step == 4
    resumed.close()
    records = rundir.read_metrics(str(tmp_path))
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]

    import tensorflow as tf

    events = [
        e
        for path in sorted((tmp_path / "tensorboard").iterdir())
        for e in tf.compat.v1.train.summary_iterator(str(path))
    ]
    purges = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]  # START
    assert purges == [4]
