"""Study files and the runs they expand to: loading a study, run names, each run's flags and command,
and validating every run before anything trains."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from inception_jax.trainer import rundir
from inception_jax.trainer.config import flag_value

_jsonable = rundir.jsonable
MAX_NAME = 160  # longer names keep their first characters and end in a hash


class SweepError(ValueError):
    """A bad study, flag or sweep directory; `main` prints it as one `error:` line and exits 2."""


@dataclass
class Study:
    path: str
    name: str
    base_config: str  # as the study writes it: "configs/x.py[:arg]"
    root: str  # the directory the base config path is relative to; runs start there
    overrides: dict
    compare_within: tuple
    baseline: dict  # BASELINE: the setting every other is compared with ({}: the report chooses pairs)
    rank_against: dict  # RANK_AGAINST: {"key", "values": {value of key: reference number}, "source"}
    generators: dict  # sweep name -> generator function
    doc: str = ""


def load_study(path: str) -> Study:
    if not os.path.isfile(path):
        raise SweepError(f"study file {path!r} does not exist; pass experiments/<study>.py")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"inception_jax_study_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # Like a script, a study can import its neighbours (shared scales in experiments/regimes.py).
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the study file is the user's to fix
        raise SweepError(f"study file {path} failed to load: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    base = getattr(module, "BASE_CONFIG", None)
    if not isinstance(base, str):
        raise SweepError(f'{path} must set BASE_CONFIG = "configs/<file>.py[:arg]" (the config every run starts from)')
    generators = {n[len("sweep_") :]: f for n, f in vars(module).items() if n.startswith("sweep_") and callable(f)}
    if callable(getattr(module, "sweep", None)):
        generators[""] = module.sweep
    overrides = dict(getattr(module, "OVERRIDES", {}))
    _check_keys(overrides, f"{path}: OVERRIDES")
    baseline = getattr(module, "BASELINE", {})
    if not isinstance(baseline, dict):
        raise SweepError(f'{path}: BASELINE must be a dict of overrides naming one setting, e.g. {{"model.name": "x"}}')
    _check_keys(baseline, f"{path}: BASELINE")
    rank_against = getattr(module, "RANK_AGAINST", {})
    if rank_against and not (isinstance(rank_against, dict) and {"key", "values", "source"} <= set(rank_against)):
        raise SweepError(f'{path}: RANK_AGAINST must be {{"key": ..., "values": {{...}}, "source": "..."}}')
    return Study(
        os.path.abspath(path),
        name,
        base,
        _config_root(path, base),
        overrides,
        tuple(getattr(module, "COMPARE_WITHIN", ())),
        dict(baseline),
        dict(rank_against),
        generators,
        (module.__doc__ or "").strip(),
    )


def _config_root(study_path: str, base_config: str) -> str:
    """The directory the base config path is relative to: the study's own, or the nearest one above it
    (so `experiments/x.py` can write `configs/digits.py`)."""
    file = _config_file(base_config)
    if os.path.isabs(file):
        if not os.path.isfile(file):
            raise SweepError(f"BASE_CONFIG file {file!r} does not exist")
        return os.path.dirname(os.path.abspath(study_path))
    here = os.path.dirname(os.path.abspath(study_path))
    while True:
        if os.path.isfile(os.path.join(here, file)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            raise SweepError(f"BASE_CONFIG {file!r} is not found next to {study_path} or in a directory above it")
        here = parent


def _config_file(base_config: str) -> str:
    return base_config.split(".py:", 1)[0] + ".py" if ".py:" in base_config else base_config


def _check_keys(overrides: dict, where: str) -> None:
    for key in overrides:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise SweepError(f"{where}: {key!r} is not a dotted config key such as 'model.naive'")


def expand(study: Study, sweeps: list[str]) -> list[dict]:
    """The runs' overrides: one sweep's dicts, or the product of several named sweeps' dicts."""
    names = sweeps or [""]
    for n in names:
        if n not in study.generators:
            named = ", ".join(sorted(k for k in study.generators if k)) or "none"
            what = "defines no sweep()" if n == "" else f"has no sweep_{n}()"
            raise SweepError(f"{study.path} {what}; its named sweeps: {named}")
    axes = []
    for n in names:
        items = list(study.generators[n]())
        for item in items:
            if not isinstance(item, dict):
                raise SweepError(f"sweep{'_' + n if n else ''}() yielded {item!r}; yield dicts of overrides")
            _check_keys(item, f"sweep{'_' + n if n else ''}()")
        axes.append(items)
    runs = []
    for combo in itertools.product(*axes):
        merged = {}
        for part in combo:
            clash = set(merged) & set(part)
            if clash:
                raise SweepError(
                    f"sweeps {', '.join(names)} both set {', '.join(sorted(clash))}; a key may come from one sweep only"
                )
            merged.update(part)
        runs.append(merged)
    return runs


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
_NUMERIC = set("0123456789.+-e_")  # every character a number or a tuple of numbers is spelt with


def _spell(value) -> tuple[str, bool]:
    """(text, exact): exact when no other value of another type or content spells the same text."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        return repr(value), math.isfinite(value)
    if isinstance(value, str):
        text = _UNSAFE.sub("_", value).strip("_") or "_"
        return text, text == value and not set(value) <= _NUMERIC and value not in (
            "True",
            "False",
            "None",
            "inf",
            "nan",
        )
    if isinstance(value, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        parts = [_spell(v) for v in value]  # (1, 1, 1) -> 1_1_1; (0.4,) -> 0.4_; () -> _
        return "_".join(p for p, _ in parts) + ("_" if len(value) < 2 else ""), all(e for _, e in parts)
    return _UNSAFE.sub("_", str(value)), False


def run_name(overrides: dict) -> str:
    """A readable directory name spelt from the overrides, e.g. `model.naive=True,seed=0`.

    Deterministic and unique: a value the name cannot spell exactly (`train[:10%]`, a string that
    reads as a number) or a name over MAX_NAME characters adds a hash of the overrides."""
    if not overrides:
        return "base"
    pairs = [(k, *_spell(v)) for k, v in ordered(overrides)]
    text = ",".join(f"{k}={s}" for k, s, _ in pairs)
    if all(exact for _, _, exact in pairs) and len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha256(json.dumps(_jsonable(overrides), sort_keys=True).encode()).hexdigest()[:8]
    return f"{text[: MAX_NAME - 9]}-{digest}"


setting_of = rundir.setting_of
ordered = rundir.ordered


def parse_extra_flags(argv: list[str], swept: Iterable[str]) -> dict[str, str]:
    """`--config.x=y` flags given to the sweep: {"x": "y"}, for every run."""
    extras = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not key.startswith("--config.") or not eq:
            hint = " (write --config.x=y with an '=')" if key.startswith("--config.") else ""
            raise SweepError(
                f"unexpected argument {arg!r}{hint}; the sweep takes its own options and "
                "--config.x=y overrides for every run"
            )
        extras[key[len("--config.") :]] = value
    _check_keys(extras, "command line")
    clash = sorted(set(extras) & set(swept))
    if clash:
        raise SweepError(f"--config.{clash[0]} is swept by the study; a flag for every run cannot set it too")
    return extras


def config_flags_of(study: Study, extras: dict[str, str], overrides: dict) -> list[str]:
    """The `--config=...` and `--config.x=y` flags of one run: study OVERRIDES, then the command line's
    flags (which win over OVERRIDES), then the run's own overrides."""
    values = {k: flag_value(v) for k, v in study.overrides.items()}
    values.update(extras)
    values.update({k: flag_value(v) for k, v in ordered(overrides)})
    return [f"--config={study.base_config}"] + [f"--config.{k}={v}" for k, v in values.items()]


def train_argv(flags_: list[str], workdir: str) -> list[str]:
    """What follows the interpreter: `-m inception_jax.trainer.main <flags> --workdir=...`."""
    return ["-m", "inception_jax.trainer.main", *flags_, f"--workdir={workdir}"]


def parse_config(flags_: list[str], root: str):
    """Parses flags with the same `config_flags` definition `main` uses; returns the ConfigDict."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main"] + [f if not f.startswith("--config=") else f"--config={_at(root, f[9:])}" for f in flags_]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=False, accept_new_attributes=True, sys_argv=argv
    )
    try:
        values(argv)
    except (flags.Error, KeyError, ValueError, TypeError, OSError) as e:
        raise SweepError(" ".join(str(e).split())) from None
    return values.config


def _at(root: str, base_config: str) -> str:
    return base_config if os.path.isabs(_config_file(base_config)) else os.path.join(root, base_config)


@dataclass
class Run:
    index: int
    name: str
    overrides: dict
    argv: list[str]
    total_steps: int | None = None
    num_classes: int | None = None
    params: int | None = None
    gmacs: float | None = None
    record: dict = field(default_factory=dict)  # the manifest entry (status, exit code, ...)


def plan(study: Study, overrides: list[dict], extras: dict[str, str], sweep_dir: str, *, need_data: bool) -> list[Run]:
    """Every run, validated before anything trains. `need_data=False` (dry run, SLURM script) lets an
    unreadable dataset through: the data may live only on the cluster."""
    from inception_jax.models import profile, registry
    from inception_jax.trainer import validation

    names = [run_name(o) for o in overrides]
    seen = {}
    for o, n in zip(overrides, names):
        if n in seen:
            raise SweepError(f"the study yields the same run twice: {seen[n]} (run names must differ)")
        seen[n] = o
    runs, datasets, models = [], {}, {}
    for i, (o, n) in enumerate(zip(overrides, names)):
        flags_ = config_flags_of(study, extras, o)
        try:
            config = validation.validated(parse_config(flags_, study.root))
        except (SweepError, validation.ConfigError) as e:
            raise SweepError(f"run {n}: {e}") from None
        run = Run(
            i,
            n,
            o,
            train_argv(flags_, os.path.join(sweep_dir, n)),
            total_steps=config.total_steps if config.total_steps > 0 else None,
        )
        data_key = (config.dataset.name, config.dataset.data_dir, config.dataset.train_split, config.dataset.eval_split)
        if data_key not in datasets:
            datasets[data_key] = _num_classes(config, need_data)
        run.num_classes = datasets[data_key]
        if run.num_classes is not None:
            model_key = json.dumps(
                [
                    _jsonable(dict(config.model)),
                    config.input.image_size,
                    list(config.aux_loss_weights),
                    run.num_classes,
                ],
                sort_keys=True,
            )
            if model_key not in models:
                options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items() if k != "name"}
                net = registry.create_model(config.model.name, **{"num_classes": run.num_classes, **options})
                try:
                    validation.check_model_against_config(config, net, config.input.image_size)
                except validation.ConfigError as e:
                    raise SweepError(f"run {n}: {e}") from None
                models[model_key] = profile.params_and_macs(net, config.input.image_size)
            run.params, macs = models[model_key]
            run.gmacs = macs / 1e9
        runs.append(run)
    return runs


def _num_classes(config, need_data: bool) -> int | None:
    if config.model.get("num_classes") is not None:
        return int(config.model.num_classes)
    from inception_jax.trainer.data import pipeline  # TensorFlow: only when a run's class count is needed

    try:
        return pipeline.dataset_info(config).num_classes
    except (ValueError, FileNotFoundError) as e:
        if need_data:
            raise SweepError(" ".join(str(e).split())) from None
        print(
            f"note: dataset {config.dataset.name!r} is not readable here ({type(e).__name__}); "
            "parameter and MAC counts are left out",
            file=sys.stderr,
        )
        return None


# ----------------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------------
