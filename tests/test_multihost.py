"""Issue 9: the same command on 1 process x 8 devices and on 2 cooperating processes x 4 devices.

Workers are real `inception-train` processes joined over 127.0.0.1 (gloo collectives),
run under an outer timeout: a missing peer aborts a JAX process rather than raising.

Equal "to float rounding": both topologies train on the same examples in the same order (the
global data order), so the runs differ only in the order in which cross-device sums are added. The
comparison runs in float64 (`JAX_ENABLE_X64`, `dtype=param_dtype=float64`), where that rounding is
~1e-16 and stays below 1e-6 relative over the run. In float32 the two agree to ~1e-6 after the first
step and then drift apart by up to a few percent within a few steps: this tiny network on digits
(whose flat backgrounds make max-pool maxima near-ties) amplifies rounding tenfold or more per step,
and so does the same pair 1 x 8 vs 1 x 4 devices in one process; it is the float32 arithmetic, not
the cluster.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from inception_jax.trainer import checkpoint as ckpt_lib  # noqa: E402
from inception_jax.trainer import rundir  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DIGITS_CONFIG = os.path.join(REPO, "configs", "digits.py")
STEPS = 6
TIMEOUT = 600  # per run; a healthy pair finishes in well under a minute of CPU each
RTOL = 1e-6  # float64 runs: relative agreement of losses, gradient norms, eval loss and parameters


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from inception_jax.trainer.data import digits

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    digits.ensure_prepared(data_dir)
    return data_dir


def _flags(workdir, data_dir, *, steps=STEPS, bn="global", float64=True, batch=16, checkpoint_every=3):
    flags = [
        f"--config={DIGITS_CONFIG}",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        f"--config.total_steps={steps}",
        "--config.num_epochs=0.0",
        f"--config.batch_size={batch}",
        "--config.eval_batch_size=64",
        "--config.model.width_multiplier=0.0625",
        "--config.schedule.warmup_epochs=0.0",
        "--config.log_every_steps=1",
        f"--config.checkpoint_every_steps={checkpoint_every}",
        "--config.eval_every_steps=3",
        "--config.progress_bar=False",
        f"--config.bn_statistics={bn}",
    ]
    if float64:
        flags += ["--config.model.dtype=float64", "--config.model.param_dtype=float64"]
    return flags


def _env(devices: int, float64: bool = True, **extra):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env["JAX_ENABLE_X64"] = "1" if float64 else "0"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # conftest's cache: later runs skip compiles
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(flags, *, processes=1, devices=8, float64=True, **env):
    """Starts one run: `processes` workers with `devices // processes` CPU devices each."""
    if processes == 1:
        argv = [[sys.executable, "-m", "inception_jax.trainer.main", *flags]]
    else:
        address = f"127.0.0.1:{_free_port()}"
        argv = [
            [
                sys.executable,
                "-m",
                "inception_jax.trainer.main",
                *flags,
                f"--coordinator_address={address}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ]
            for i in range(processes)
        ]
    return [
        subprocess.Popen(
            a,
            cwd=REPO,
            env=_env(devices // processes, float64, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for a in argv
    ]


def _finish(procs, timeout=TIMEOUT):
    """Waits for every worker (killing all at the timeout); returns [(exit status, output)]."""
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            pytest.fail(f"a worker ran past {timeout}s:\n{out[-3000:]}")
        results.append((p.returncode, out))
    return results


def _run(flags, **kw):
    results = _finish(_start(flags, **kw))
    for status, out in results:
        assert status == 0, out[-3000:]
    return results


def _train_records(workdir):
    return [r for r in rundir.read_metrics(str(workdir)) if "train/loss" in r]


def _eval_records(workdir):
    return [r for r in rundir.read_metrics(str(workdir)) if "eval/top1" in r]


def _assert_same_run(a, b, *, rtol=RTOL):
    """Same steps, losses, gradient norms, learning rates, eval results and final parameters."""
    ta, tb = _train_records(a), _train_records(b)
    assert [r["step"] for r in ta] == [r["step"] for r in tb] == list(range(1, STEPS + 1))
    for ra, rb in zip(ta, tb):
        for key in ("train/loss", "train/grad_norm", "train/param_norm", "train/learning_rate", "train/top1"):
            np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, err_msg=f"{key} at step {ra['step']}")
    ea, eb = _eval_records(a), _eval_records(b)
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [3, STEPS]
    for ra, rb in zip(ea, eb):
        assert ra["eval/examples"] == rb["eval/examples"] == 297  # each example once, every process
        assert ra["eval/top1"] == rb["eval/top1"] and ra["eval/top5"] == rb["eval/top5"]
        np.testing.assert_allclose(ra["eval/loss"], rb["eval/loss"], rtol=rtol)
    va, vb = ckpt_lib.load_init_variables(str(a)), ckpt_lib.load_init_variables(str(b))
    import jax

    for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, float(np.abs(x).max())))


@pytest.mark.slow
def test_a_pair_survives_sigterm_to_one_process_and_trains_exactly_as_one_then_continues_on_one_device(
    digits_dir, tmp_path
):
    """One process with 8 devices, and a pair with 4 each (global BatchNorm, float64), started together.
    SIGTERM to process 1 only: both save the same step and exit 0. The newest checkpoint is then
    garbled; the resumed pair skips it on both processes alike and ends where the single process ends
    uninterrupted. Its checkpoint then continues on one device. (Per-device BatchNorm needs no
    collective across processes; test_train compares it with global BatchNorm on 8 devices.)"""
    one, work = tmp_path / "one", tmp_path / "two"
    reference = _start(_flags(one, digits_dir))
    procs = _start(_flags(work, digits_dir, checkpoint_every=1), processes=2)
    deadline = time.monotonic() + TIMEOUT
    while len(_train_records(work)) < 2:
        assert all(p.poll() is None for p in procs), "a worker ended before step 2"
        assert time.monotonic() < deadline, "no step 2 in time"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    (s0, out0), (s1, out1) = _finish(procs)
    assert s0 == 0 and s1 == 0, out0[-2000:] + out1[-2000:]
    stopped = [
        int(line.split("saving step ")[1].split()[0])
        for out in (out0, out1)
        for line in out.splitlines()
        if "saving step" in line
    ]
    assert len(stopped) == 2 and stopped[0] == stopped[1] < STEPS, (out0[-2000:], out1[-2000:])
    assert "another process stopped" in out0 and "received signal 15" in out1
    checkpoints = ckpt_lib.Checkpointer(str(work))
    assert checkpoints.latest_step() == stopped[0]
    newest = os.path.join(checkpoints.directory, str(stopped[0]), "state")
    checkpoints.close()
    arrays = max((os.path.join(d, f) for d, _, fs in os.walk(newest) for f in fs), key=os.path.getsize)
    with open(arrays, "r+b") as f:  # garble the array data of the newest checkpoint
        f.seek(os.path.getsize(arrays) // 3)
        f.write(b"\xff" * max(1, os.path.getsize(arrays) // 3))

    (_, out0), (_, out1) = _run(_flags(work, digits_dir, checkpoint_every=1), processes=2)
    for out in (out0, out1):
        assert f"checkpoint at step {stopped[0]}" in out and "cannot be restored" in out
    ((status, out),) = _finish(reference)
    assert status == 0, out[-3000:]
    _assert_same_run(one, work)
    assert "joined: process 0 of 2, 4 local of 8 devices" in out0
    assert "joined: process 1 of 2, 4 local of 8 devices" in out1
    assert "global batch 16 (2 per device" in out0 and "global order" in out0
    assert "final eval at step" in out0 and "final eval" not in out1  # only process 0 reports
    files = ["checkpoints", "config.json", "environment.json", "metrics.jsonl", "status.json", "tensorboard"]
    assert sorted(os.listdir(work)) == files
    env = rundir.read_environment(work)
    assert (env["process_count"], env["device_count"], env["platform"]) == (2, 8, "cpu")
    status = rundir.read_status(work)
    assert (status["status"], status["step"], status["exit_code"]) == (rundir.FINISHED, STEPS, 0), status

    ((status, out),) = _finish(_start(_flags(work, digits_dir, steps=STEPS + 2), devices=1))
    assert status == 0, out[-3000:]
    assert "1 process(es), 1 device(s)" in out
    assert [r["step"] for r in _train_records(work)] == list(range(1, STEPS + 3))
    assert ckpt_lib.Checkpointer(str(work)).latest_step() == STEPS + 2


def test_a_peer_that_never_starts_is_a_clear_error_not_a_hang(digits_dir, tmp_path):
    """Process 1 of 2 alone: it must give up within the join timeout, with a message and status 1."""
    flags = _flags(tmp_path / "w", digits_dir, float64=False)
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inception_jax.trainer.main",
            *flags,
            f"--coordinator_address={address}",
            "--num_processes=2",
            "--process_id=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(4, False, JAX_INITIALIZATION_TIMEOUT="10"),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: process 1 of 2 at {address}: not every process joined within 10 s" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_joining_twice_in_one_process_is_harmless():
    """A notebook calling train_and_evaluate twice joins once: the second call is a no-op."""
    code = (
        "import sys, jax; from inception_jax.trainer import parallel; args = (sys.argv[1], 2, int(sys.argv[2])); "
        "first = parallel.initialize_distributed(*args); second = parallel.initialize_distributed(*args); "
        "print('result', first, second, jax.process_count(), jax.device_count())"
    )
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, address, str(i)],
            cwd=REPO,
            env=_env(2, False),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for status, out in _finish(procs, timeout=120):
        assert status == 0, out[-2000:]
        assert "result True True 2 4" in out
        assert out.count("joined: process") == 1


def test_half_a_cluster_spec_is_a_usage_error(digits_dir, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inception_jax.trainer.main",
            *_flags(tmp_path / "w", digits_dir),
            "--coordinator_address=127.0.0.1:1234",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(1, False),
        timeout=120,
    )
    assert proc.returncode == 2
    assert "missing: --num_processes, --process_id" in proc.stderr


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        (
            {
                "SLURM_JOB_ID": "7",
                "SLURM_STEP_NODELIST": "n[1-2]",
                "SLURM_NTASKS": "2",
                "SLURM_PROCID": "1",
                "SLURM_LOCALID": "0",
            },
            "slurm",
        ),
        (
            {
                "SLURM_JOB_ID": "7",
                "SLURM_STEP_NODELIST": "n1",
                "SLURM_NTASKS": "1",
                "SLURM_PROCID": "0",
                "SLURM_LOCALID": "0",
            },
            None,
        ),  # one task: runs alone, never waits for a peer
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # an sbatch script outside srun
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:4000", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "cloud_tpu"),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ],
)
def test_launcher_detection(env, expected, monkeypatch):
    from inception_jax.trainer import parallel

    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parallel.detect_launcher() == expected
    spec = parallel.cluster_spec()
    assert (spec.launcher if spec else None) == expected
    assert parallel.cluster_spec(mode="off") is None


def test_explicit_cluster_spec(monkeypatch):
    from inception_jax.trainer import parallel

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.cluster_spec("h:1", 2, 1) == parallel.ClusterSpec("h:1", 2, 1, "explicit")
    assert parallel.cluster_spec("h:1", 1, 0) is None  # a cluster of one is a single process
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:2")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert parallel.cluster_spec() == parallel.ClusterSpec("h:2", 4, 3, "explicit")
    with pytest.raises(ValueError, match=r"--process_id=5 must be in \[0, --num_processes=4\)"):
        parallel.cluster_spec(process_id=5)
    with pytest.raises(ValueError, match="not one of"):
        parallel.cluster_spec(mode="sometimes")


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {"SLURM_STEP_TASKS_PER_NODE": "1(x4)", "SLURM_NODEID": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
            list(range(8)),
        ),  # one task per host: all of its GPUs, not JAX's default of the local rank's one
        (
            {"SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_NODEID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
            None,
        ),  # one task per GPU: JAX's default is right
        ({"SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_NODEID": "1", "SLURM_GPUS_ON_NODE": "4"}, [0, 1, 2, 3]),
        ({"SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_NODEID": "0"}, None),  # no GPUs given: CPU or TPU
    ],
)
def test_one_slurm_task_per_host_uses_all_its_gpus(env, expected, monkeypatch):
    from inception_jax.trainer import parallel

    for name in list(os.environ):
        if name.startswith(("SLURM_", "CUDA_VISIBLE")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parallel.local_device_ids("slurm") == expected
    assert parallel.local_device_ids(None) is None
