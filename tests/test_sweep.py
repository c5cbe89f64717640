"""Issue 8: the sweep launcher. Names, validation, dry runs and SLURM scripts are checked in-process
without training; one small study (2 settings x 2 seeds of a few digits steps) is run for real, shared
by the end-to-end tests: Ctrl-C stops it cleanly, a re-run resumes the interrupted run and runs the
rest two at a time, a run that fails is recorded while the others complete, and a re-run of the
finished sweep starts nothing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from inception_jax.tools import report, sweep  # noqa: E402
from inception_jax.tools.sweep import local as sweep_local  # noqa: E402
from inception_jax.trainer import rundir  # noqa: E402

# ml_collections loads `--config=` files with the deprecated `load_module` (its own code, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DIGITS_CONFIG = os.path.join(REPO, "configs", "digits.py")
TOTAL_STEPS = 12  # Ctrl-C after step 3 lands mid-run: 9 steps and two saves are left
# The runs of tests/test_reliability.py's interruption test (same program: the compile cache is shared).
SMALL_RUN = {
    "num_epochs": 0.0,
    "total_steps": TOTAL_STEPS,
    "batch_size": 16,
    "eval_batch_size": 64,
    "model.width_multiplier": 0.0625,
    "schedule.warmup_epochs": 0.0,
    "log_every_steps": 1,
    "checkpoint_every_steps": 4,  # a save costs ~0.6 s here, more than a step
    "eval_every_steps": 1000,
    "progress_bar": False,
}
SPLITS = ("train", "train[:50%]")


def write_study(path, body: str, overrides: dict = SMALL_RUN) -> str:
    path.write_text(f"BASE_CONFIG = {DIGITS_CONFIG!r}\nOVERRIDES = {overrides!r}\n\n{body}")
    return str(path)


TWO_BY_TWO = f"""
def sweep():
    for split in {SPLITS!r}:
        for seed in (0, 1):
            yield {{"dataset.train_split": split, "seed": seed}}
"""


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from inception_jax.trainer.data import digits  # noqa: F401  (registers the builder)

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("digits", data_dir=data_dir).download_and_prepare()
    return data_dir


def _env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one CPU device, conftest's compile level
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _main(argv) -> tuple[int, str]:
    out = io.StringIO()
    code = sweep.main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def _statuses(sweep_dir) -> dict[str, str]:
    return {r["name"]: r["status"] for r in sweep.read_manifest(str(sweep_dir))["runs"]}


def _train_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["step"] for r in map(json.loads, f) if "train/loss" in r]


# --- Without training ---------------------------------------------------------------------------------


def test_names_are_readable_deterministic_and_unique():
    assert sweep.run_name({"model.naive": True, "seed": 0}) == "model.naive=True,seed=0"
    assert sweep.run_name({"seed": 0, "model.naive": True}) == "model.naive=True,seed=0"  # order-free
    assert sweep.run_name({"model.depths": (1, 1, 1), "lr": 0.1}) == "lr=0.1,model.depths=1_1_1"
    assert (
        sweep.run_name({"model.inception_a_5x5": "3x3x2", "aux_loss_weights": (0.4,)})
        == "aux_loss_weights=0.4_,model.inception_a_5x5=3x3x2"
    )
    assert sweep.run_name({}) == "base"
    sliced = sweep.run_name({"dataset.train_split": "train[:10%]", "seed": 1})
    assert re.fullmatch(r"dataset\.train_split=train_10,seed=1-[0-9a-f]{8}", sliced)
    # Values the name cannot spell exactly get a hash, so different overrides never share a directory.
    lookalikes = [
        {"x": 1},
        {"x": "1"},
        {"x": 1.0},
        {"x": (1.0,)},
        {"x": "1.0_"},
        {"x": "train[:10]"},
        {"x": "train[:10%]"},
        {"x": True},
        {"x": "True"},
        {"x": (1, 1)},
        {"x": "1_1"},
        {"x": [1, 1]},
        {"x": None},
        {"x": "None"},
        {"x": ()},
        {"x": "_"},
        {"x": 1e-05},
        {"x": "1e-05"},
    ]
    names = [sweep.run_name(o) for o in lookalikes]
    assert len(set(names)) == len(names), names
    assert names == [sweep.run_name(o) for o in lookalikes]
    long = sweep.run_name({f"model.option_{i}": "value" for i in range(20)})
    assert len(long) <= sweep.MAX_NAME and re.search(r"-[0-9a-f]{8}$", long)
    assert sweep.setting_of({"model.naive": True, "seed": 3}) == {"model.naive": True}


def test_overrides_become_flags_the_trainer_parses_back():
    values = {
        "model.naive": True,
        "model.depths": (1, 1, 1),
        "aux_loss_weights": (0.3,),
        "dataset.train_split": "train[:10%]",
        "label_smoothing": 0.1,
        "total_steps": 7,
        "model.inception_a_5x5": "3x3x2",
    }
    flags = [f"--config={DIGITS_CONFIG}"] + [f"--config.{k}={sweep.flag_value(v)}" for k, v in values.items()]
    config = sweep.parse_config(flags, REPO)
    for key, value in values.items():
        got = config
        for part in key.split("."):
            got = got[part]
        assert got == value and type(got) is type(value), key


def test_named_sweeps_multiply_and_clashes_are_refused(tmp_path):
    path = write_study(
        tmp_path / "s.py",
        """
def sweep_lr():
    yield {"schedule.base_learning_rate": 0.1}
    yield {"schedule.base_learning_rate": 0.2}
def sweep_seeds():
    for s in range(3):
        yield {"seed": s}
def sweep_again():
    yield {"seed": 9}
""",
    )
    study = sweep.load_study(path)
    runs = sweep.expand(study, ["lr", "seeds"])
    assert len(runs) == 6 and runs[0] == {"schedule.base_learning_rate": 0.1, "seed": 0}
    with pytest.raises(sweep.SweepError, match="both set seed"):
        sweep.expand(study, ["seeds", "again"])
    with pytest.raises(sweep.SweepError, match="defines no sweep\\(\\); its named sweeps: again, lr, seeds"):
        sweep.expand(study, [])
    with pytest.raises(sweep.SweepError, match="has no sweep_nope"):
        sweep.expand(study, ["nope"])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"optimizer.nme": "sgd"}, r"config\.optimizer\.nme\. Did you mean config\.optimizer\.name\?"),
        (
            {"model.naiv": True},
            r"config\.model\.naiv is not an option of 'googlenet'\. Did you mean config\.model\.naive\?",
        ),
        ({"optimzer.name": "sgd"}, r"optimzer.*Did you mean \"optimizer\""),
        ({"total_steps": 1.5}, r"config\.total_steps=1\.5"),
    ],
)
def test_an_unknown_key_fails_before_anything_trains(override, message, tmp_path, digits_dir, monkeypatch, capsys):
    monkeypatch.setattr(sweep_local, "_start", lambda *a, **k: pytest.fail("nothing may start"))
    study = write_study(
        tmp_path / "bad.py",
        f"""
def sweep():
    yield {{"seed": 0}}
    yield {{**{override!r}, "seed": 1}}
""",
    )
    code, _ = _main([study, "--workdir", tmp_path / "runs", f"--config.dataset.data_dir={digits_dir}"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: run ") and re.search(message, lines[0]), err
    assert not (tmp_path / "runs").exists()


def test_sweep_flags_are_checked(tmp_path, digits_dir, capsys):
    study = write_study(tmp_path / "s.py", TWO_BY_TWO)
    base = [study, "--workdir", tmp_path / "runs"]
    assert _main(base + ["--config.seed=3"])[0] == 2
    assert "--config.seed is swept by the study" in capsys.readouterr().err
    assert _main(base + ["--config.seed", "3"])[0] == 2
    assert "write --config.x=y with an '='" in capsys.readouterr().err
    assert _main(base + ["--parallel", "0"])[0] == 2
    capsys.readouterr()


def test_dry_run_prints_every_run_and_its_command_and_writes_nothing(tmp_path, digits_dir):
    study = write_study(tmp_path / "s.py", TWO_BY_TWO)
    code, out = _main([study, "--workdir", tmp_path / "runs", "--dry-run", f"--config.dataset.data_dir={digits_dir}"])
    assert code == 0 and not (tmp_path / "runs").exists()
    commands = [shlex.split(line.strip())[1:] for line in out.splitlines() if line.strip().startswith("python -m")]
    assert len(commands) == 4
    for argv in commands:
        assert argv[:2] == ["-m", "inception_jax.trainer.main"]
        assert f"--config.dataset.data_dir={digits_dir}" in argv and f"--config.total_steps={TOTAL_STEPS}" in argv
    assert "--config.dataset.train_split=train[:50%]" in commands[2] and "--config.seed=0" in commands[2]
    assert re.search(r"\[0\] dataset.train_split=train,seed=0: pending, 12 steps, [\d,]+ params", out)


def _parse_sbatch(text: str) -> tuple[dict, dict]:
    options = dict(
        line[len("#SBATCH --") :].split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH --")
    )
    arms = {int(m.group(1)): shlex.split(m.group(2)) for m in re.finditer(r"^  (\d+)\) ARGS=\((.*)\) ;;", text, re.M)}
    return options, arms


def test_slurm_writes_a_job_array_over_the_manifest(tmp_path, digits_dir):
    study = write_study(tmp_path / "s.py", TWO_BY_TWO)
    sweep_dir = tmp_path / "runs"
    first = sweep.run_name({"dataset.train_split": "train", "seed": 0})
    (sweep_dir / first).mkdir(parents=True)  # finished elsewhere: the array leaves it out
    rundir.write_status(str(sweep_dir / first), rundir.FINISHED, step=TOTAL_STEPS, total_steps=TOTAL_STEPS)
    code, out = _main(
        [
            study,
            "--workdir",
            sweep_dir,
            "--slurm",
            "--partition=gpu",
            "--time=01:30:00",
            "--gpus=4",
            "--nodes=2",
            "--max-concurrent=2",
            "--sbatch-option=--account=abc",
            f"--config.dataset.data_dir={digits_dir}",
        ]
    )
    assert code == 0, out
    text = (sweep_dir / sweep.SBATCH).read_text()
    options, arms = _parse_sbatch(text)
    assert options["array"] == "1-3%2" and options["nodes"] == "2" and options["ntasks-per-node"] == "1"
    assert options["gpus-per-node"] == "4" and options["partition"] == "gpu" and options["time"] == "01:30:00"
    assert options["account"] == "abc" and options["signal"] == "TERM@120"
    assert subprocess.run(["bash", "-n", str(sweep_dir / sweep.SBATCH)]).returncode == 0

    manifest = sweep.read_manifest(str(sweep_dir))
    assert [r["index"] for r in manifest["runs"]] == [0, 1, 2, 3]
    assert [r["status"] for r in manifest["runs"]] == ["done", "pending", "pending", "pending"]
    assert manifest["flags"] == {"dataset.data_dir": digits_dir} and manifest["overrides"]["total_steps"] == TOTAL_STEPS
    assert sorted(arms) == [1, 2, 3]
    for run in manifest["runs"][1:]:
        assert ["-m", "inception_jax.trainer.main", *arms[run["index"]]] == run["argv"]
        assert run["argv"][-1] == f"--workdir={sweep_dir / run['name']}"

    # Run the script as SLURM would, with an `srun` that records what it was asked to run.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "srun"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {tmp_path / "srun_args"}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "2"}
    assert subprocess.run(["bash", str(sweep_dir / sweep.SBATCH)], env=env).returncode == 0
    argv = (tmp_path / "srun_args").read_text().split("\0")[:-1]
    assert argv[:3] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", sys.executable]
    assert argv[3:] == manifest["runs"][2]["argv"]
    env["SLURM_ARRAY_TASK_ID"] = "0"  # done: not in the array
    assert subprocess.run(["bash", str(sweep_dir / sweep.SBATCH)], env=env, capture_output=True).returncode == 2


def test_cpu_slots_split_the_cpus_disjointly():
    cpus = sorted(os.sched_getaffinity(0))
    assert sweep.cpu_slots(1) == [None]
    if len(cpus) >= 2:
        slots = sweep.cpu_slots(2)
        assert len(slots) == 2 and not set(slots[0]) & set(slots[1]) and sorted(slots[0] + slots[1]) == cpus
    assert sweep.cpu_slots(len(cpus) + 1)[-1] == [cpus[0]]  # more runs than CPUs: they share
    env = sweep.child_env([0])
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"


def test_error_line_is_the_trainers_error_or_the_last_line():
    assert sweep.error_line("a\nerror: loss is NaN at step 3\nmore\n", 1) == "error: loss is NaN at step 3"
    assert sweep.error_line("Traceback...\n  File x\nValueError: bad\n", 1) == "ValueError: bad"
    assert sweep.error_line("", -9) == "killed by signal 9 (SIGKILL)"


# --- One real sweep, shared ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, digits_dir):
    """Runs the 2 x 2 study the way a user would: Ctrl-C during the first run, then a re-run two at a
    time in which one run fails (its checkpoint directory is a file), then `--retry-failed`."""
    tmp = tmp_path_factory.mktemp("sweep")
    study = write_study(tmp / "study.py", TWO_BY_TWO)
    sweep_dir = tmp / "runs"
    argv = [study, "--workdir", str(sweep_dir), f"--config.dataset.data_dir={digits_dir}"]
    names = [sweep.run_name({"dataset.train_split": s, "seed": i}) for s in SPLITS for i in (0, 1)]
    facts = {"names": names, "dir": sweep_dir}

    # 1. One run at a time; Ctrl-C once the first run has trained a few steps.
    proc = subprocess.Popen(
        [sys.executable, "-m", "inception_jax.tools.sweep", *argv],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = sweep_dir / names[0]
    t0 = time.monotonic()
    while not (first / "metrics.jsonl").exists() or len(_train_steps(first)) < 3:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() - t0 < 300, "no training step within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    facts["interrupt_out"], _ = proc.communicate(timeout=300)
    facts["interrupt_code"] = proc.returncode
    facts["after_interrupt"] = sweep.read_manifest(str(sweep_dir))
    facts["stopped_at"] = max(_train_steps(first))
    facts["checkpoints_at_stop"] = sorted(int(d) for d in os.listdir(first / "checkpoints") if d.isdigit())

    # 2. Two at a time; the last run cannot write checkpoints and fails, the others complete.
    broken = sweep_dir / names[3]
    broken.mkdir()
    (broken / "checkpoints").write_text("not a directory")
    env = _env()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the in-process sweep hands its environment to the runs
    try:
        facts["rerun_code"], facts["rerun_out"] = _main(argv + ["--parallel", "2"])
        facts["after_rerun"] = sweep.read_manifest(str(sweep_dir))
        os.remove(broken / "checkpoints")
        facts["retry_code"], facts["retry_out"] = _main(argv + ["--parallel", "2", "--retry-failed"])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    facts["final"] = sweep.read_manifest(str(sweep_dir))
    facts["argv"] = argv
    return facts


def _check_ctrl_c_stops_the_sweep_cleanly_and_a_rerun_resumes(real_sweep):
    names, after = real_sweep["names"], real_sweep["after_interrupt"]
    assert real_sweep["interrupt_code"] == 0, real_sweep["interrupt_out"]
    assert "stopping: passing signal 2" in real_sweep["interrupt_out"]
    assert "re-run the same command to continue" in real_sweep["interrupt_out"]
    statuses = {r["name"]: r["status"] for r in after["runs"]}
    assert statuses == {names[0]: "interrupted", names[1]: "pending", names[2]: "pending", names[3]: "pending"}
    assert real_sweep["stopped_at"] < TOTAL_STEPS
    assert real_sweep["checkpoints_at_stop"][-1] == real_sweep["stopped_at"]  # it saved where it stopped

    resumed = next(r for r in real_sweep["final"]["runs"] if r["name"] == names[0])
    assert resumed["status"] == "done" and resumed["attempts"] == 2 and resumed["wall_time_s"] > 0
    assert _train_steps(real_sweep["dir"] / names[0]) == list(range(1, TOTAL_STEPS + 1))  # each step once
    log = (real_sweep["dir"] / resumed["log"]).read_text()
    assert log.count("=== attempt") == 2 and "final eval at step 12" in log


def _check_a_failed_run_is_recorded_while_the_others_complete(real_sweep):
    names = real_sweep["names"]
    assert real_sweep["rerun_code"] == 1, real_sweep["rerun_out"]
    runs = {r["name"]: r for r in real_sweep["after_rerun"]["runs"]}
    assert [runs[n]["status"] for n in names] == ["done", "done", "done", "failed"]
    failed = runs[names[3]]
    assert failed["exit_code"] == 1
    assert failed["error"].startswith("error: writing a checkpoint at step 4 to ") and "failed" in failed["error"]
    assert "3 of 4 runs done, 1 failed" in real_sweep["rerun_out"]
    # --retry-failed runs it again once the cause is fixed.
    assert real_sweep["retry_code"] == 0, real_sweep["retry_out"]
    assert "1 to run" in real_sweep["retry_out"]


def _check_the_two_by_two_sweep_ran_end_to_end_two_at_a_time(real_sweep):
    manifest, names = real_sweep["final"], real_sweep["names"]
    assert [r["name"] for r in manifest["runs"]] == names
    assert all(r["status"] == "done" and r["exit_code"] == 0 for r in manifest["runs"])
    if len(os.sched_getaffinity(0)) >= 2:  # two runs at once, each on its own CPU
        assert re.search(r"start .* \(CPU 0\)", real_sweep["rerun_out"]) and "(CPU 1)" in real_sweep["rerun_out"]
    for run in manifest["runs"]:
        workdir = real_sweep["dir"] / run["workdir"]
        config = json.loads((workdir / "config.json").read_text())
        assert config["seed"] == run["overrides"]["seed"]
        assert config["dataset"]["train_split"] == run["overrides"]["dataset.train_split"]
        with open(workdir / "metrics.jsonl") as f:
            final = [json.loads(line) for line in f][-1]
        assert final["step"] == TOTAL_STEPS and final["eval/examples"] == 297
        assert run["params"] > 0 and run["gmacs"] > 0 and run["total_steps"] == TOTAL_STEPS
        # Each run records the commit it started from (None only outside a git checkout).
        assert run["commit"] == rundir.commit()


def _check_a_rerun_of_a_finished_sweep_starts_nothing(real_sweep, monkeypatch):
    monkeypatch.setattr(sweep_local, "_start", lambda *a, **k: pytest.fail("a finished run was started again"))
    before = {r["name"]: r for r in real_sweep["final"]["runs"]}
    code, out = _main(real_sweep["argv"] + ["--parallel", "2"])
    assert code == 0 and "4 done, 0 failed earlier, 0 to run" in out
    after = {r["name"]: r for r in sweep.read_manifest(str(real_sweep["dir"]))["runs"]}
    assert after == before


def _check_another_flag_or_a_running_sweep_is_refused(real_sweep, capsys):
    code, _ = _main(real_sweep["argv"] + ["--config.total_steps=99"])
    assert code == 2 and "holds another sweep (flags:" in capsys.readouterr().err
    with sweep.locked(str(real_sweep["dir"])):  # as if another sweep (or a run it started) were alive
        code, _ = _main(real_sweep["argv"])
    assert code == 2 and "another sweep, or a run it started, is still running" in capsys.readouterr().err


def _check_the_report_of_the_sweep(real_sweep, tmp_path):
    path = report.write_report(str(real_sweep["dir"]), str(tmp_path))
    text = open(path).read()
    rows = report.summarise(str(real_sweep["dir"]))
    assert [r["label"] for r in rows] == ["dataset.train_split=train", "dataset.train_split=train[:50%]"]
    assert all(r["seeds"] == 2 and r["failed"] == 0 and 0 <= r["top1_mean"] <= 1 for r in rows)
    assert "| `dataset.train_split=train` | 2/2 |" in text
    assert "`dataset.train_split=train[:50%]` vs `dataset.train_split=train`" in text
    for png in (tmp_path / "study_curves.png", tmp_path / "study_gmacs.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_real_sweep_end_to_end(real_sweep, tmp_path, monkeypatch, capsys):
    """Every check of the real 2 x 2 sweep in one test: under xdist's work stealing, a module fixture runs
    again on each worker that takes one of its tests, and this one costs about 100 s."""
    _check_ctrl_c_stops_the_sweep_cleanly_and_a_rerun_resumes(real_sweep)
    _check_a_failed_run_is_recorded_while_the_others_complete(real_sweep)
    _check_the_two_by_two_sweep_ran_end_to_end_two_at_a_time(real_sweep)
    _check_the_report_of_the_sweep(real_sweep, tmp_path)
    with monkeypatch.context() as patch:
        _check_a_rerun_of_a_finished_sweep_starts_nothing(real_sweep, patch)
    _check_another_flag_or_a_running_sweep_is_refused(real_sweep, capsys)


def test_every_committed_study_loads_and_the_variants_study_is_the_family():
    from inception_jax.models import registry

    directory = os.path.join(REPO, "experiments")
    studies = sorted(f for f in os.listdir(directory) if f.endswith(".py") and f != "regimes.py")
    for name in studies:
        study = sweep.load_study(os.path.join(directory, name))
        assert study.generators, name
        for generator in study.generators:
            assert sweep.expand(study, [generator]), (name, generator)
    variants = sweep.load_study(os.path.join(directory, "variants.py"))
    names = {overrides["model.name"] for overrides in sweep.expand(variants, [""])}
    assert names == set(registry.list_models(registry.FAMILY)) and "fid_inception_v3" not in names
    assert variants.baseline == {"model.name": "googlenet"}
    assert set(variants.rank_against["values"]) == names
