"""Study reports: `inception-report DIR [--out DIR] [--metric eval/top1]`.

Reads the runs under DIR (a sweep directory, a directory of them, or plain workdirs) and writes `report.md`
with PNG plots: per study, a pandas table of mean ± sd over seeds per setting, the metric over steps, the
final metric against GMACs, and Welch's t-test verdicts (scipy). `summarise(DIR)` returns the table rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats

from inception_jax.trainer import rundir
from inception_jax.trainer.config import flag_value
from inception_jax.trainer.rundir import CONFIG_FILE, MANIFEST_FILE

ALPHA = 0.05  # two-sided significance level of the comparisons
# No "Software" version in the PNGs, so the same runs give the same bytes whatever matplotlib made them.
PNG_METADATA = {"Software": None}


@dataclass
class RunResult:
    name: str
    workdir: str
    overrides: dict  # everything that sets this run apart, seed included
    status: str  # done | failed | interrupted | pending | running | unfinished
    records: list[dict]
    config: dict
    exit_code: int | None = None
    error: str | None = None
    wall_time_s: float | None = None
    params: int | None = None
    gmacs: float | None = None
    environment: dict | None = None  # environment.json: versions, CPU, devices, XLA flags, commit

    @property
    def setting(self) -> dict:
        return rundir.setting_of(self.overrides)

    def final(self) -> dict | None:
        """The final eval record (at the run's last step), or None while the run is unfinished."""
        if self.status not in ("done", "unknown"):
            return None
        total = self.config.get("total_steps") or None
        evals = [r for r in self.records if "eval/top1" in r]
        if not evals:
            return None
        last = evals[-1]
        if total:
            return last if last["step"] == total else None
        return last if last["step"] == max(r["step"] for r in self.records) else None


@dataclass
class StudyRuns:
    name: str
    directory: str
    runs: list[RunResult]
    manifest: dict | None = None
    compare_within: tuple = ()
    settings: list[dict] = field(default_factory=list)  # in study order
    baseline: dict = field(default_factory=dict)  # the study's BASELINE: compared with every other setting
    rank_against: dict = field(default_factory=dict)  # the study's RANK_AGAINST: reference numbers per setting


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def load_studies(path: str) -> list[StudyRuns]:
    """Every study under `path`: a sweep directory, a directory of them, or a directory of workdirs."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory")
    if os.path.exists(os.path.join(path, MANIFEST_FILE)):
        return [_load_sweep(path)]
    subdirs = sorted(os.path.join(path, d) for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    sweeps = [_load_sweep(d) for d in subdirs if os.path.exists(os.path.join(d, MANIFEST_FILE))]
    if sweeps:
        return sweeps
    plain = [d for d in subdirs if os.path.exists(os.path.join(d, CONFIG_FILE))]
    if not plain:
        raise FileNotFoundError(f"{path} holds no {MANIFEST_FILE} and no run directory with a {CONFIG_FILE}")
    return [_load_plain(path, plain)]


def _load_sweep(directory: str) -> StudyRuns:
    manifest = rundir.read_manifest(directory)
    runs = []
    for rec in manifest["runs"]:
        workdir = os.path.join(directory, rec["workdir"])
        status = rec["status"]
        if status != "done" and rundir.is_finished(workdir):
            status = "done"  # finished by a SLURM array task since the manifest was written
        runs.append(
            RunResult(
                name=rec["name"],
                workdir=workdir,
                overrides=rec["overrides"],
                status=status,
                records=rundir.read_metrics(workdir),
                config=rundir.read_config(workdir) or {},
                exit_code=rec.get("exit_code"),
                error=rec.get("error"),
                wall_time_s=rec.get("wall_time_s"),
                params=rec.get("params"),
                gmacs=rec.get("gmacs"),
                environment=rundir.read_environment(workdir),
            )
        )
    return StudyRuns(
        manifest.get("study", os.path.basename(directory)),
        directory,
        runs,
        manifest,
        tuple(manifest.get("compare_within", ())),
        _settings_in_order(runs),
        dict(manifest.get("baseline") or {}),
        dict(manifest.get("rank_against") or {}),
    )


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


_NOT_SETTINGS = {"progress_bar", "dataset.data_dir", "init_from", "eval_only"}


def _load_plain(directory: str, workdirs: list[str]) -> StudyRuns:
    """Workdirs without a manifest: a run's setting is the config fields that differ between runs."""
    configs = {d: _flat(rundir.read_config(d) or {}) for d in workdirs}
    keys = sorted({k for c in configs.values() for k in c} - _NOT_SETTINGS)
    varying = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]
    runs = []
    for d in workdirs:
        run = RunResult(
            os.path.basename(d),
            d,
            {k: configs[d].get(k) for k in varying},
            "unknown",
            rundir.read_metrics(d),
            rundir.read_config(d) or {},
            environment=rundir.read_environment(d),
        )
        run.status = "done" if run.final() else "unfinished"
        runs.append(run)
    return StudyRuns(os.path.basename(os.path.abspath(directory)), directory, runs, None, (), _settings_in_order(runs))


def _settings_in_order(runs: list[RunResult]) -> list[dict]:
    out = []
    for run in runs:
        if run.setting not in out:
            out.append(run.setting)
    return out


# ----------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------


def _num(value) -> float:
    try:
        return float(value)  # "nan"/"inf" strings too
    except (TypeError, ValueError):
        return math.nan


def _stat(value) -> float | None:
    """A pandas statistic as a float, or None where it is missing (no values, or one for a std)."""
    return None if pd.isna(value) else float(value)


def _images_per_sec(run: RunResult) -> float:
    """Median over logging windows after the first (which includes compiling)."""
    rates = [_num(r["perf/images_per_sec"]) for r in run.records if "perf/images_per_sec" in r][1:]
    return float(pd.Series(rates, dtype=float).median())  # skips NaN; NaN when none is left


def _final_train_loss(run: RunResult) -> float:
    losses = [r for r in run.records if "train/loss" in r]
    return _num(losses[-1]["train/loss"]) if losses else math.nan


def _show(value) -> str:
    """A value as its `--config.x=` text; JSON turned the overrides' tuples into lists."""
    return flag_value(tuple(value) if isinstance(value, list) else value)


def label(setting: dict, keys: list[str] | None = None) -> str:
    """`key=value,...` over `keys` (the ones that vary within the study), or `base`."""
    shown = {k: v for k, v in setting.items() if keys is None or k in keys}
    return ",".join(f"{k}={_show(v)}" for k, v in rundir.ordered(shown)) or "base"


def _varying_keys(settings: list[dict]) -> list[str]:
    keys = sorted({k for s in settings for k in s})
    return [k for k in keys if len({json.dumps(s.get(k, "<unset>"), default=str) for s in settings}) > 1] or keys


_STATS = ("metric", "top1", "top5", "train_loss", "images_per_sec", "wall_time_s")


def finals(study: StudyRuns, metric: str = "eval/top1") -> pd.DataFrame:
    """One row per finished run: its setting (index in the study's order, and label), seed and finals."""
    records = []
    for i, setting in enumerate(study.settings):
        for run in study.runs:
            final = run.final() if run.setting == setting else None
            if final is not None:
                records.append(
                    {
                        "setting_index": i,
                        "setting": label(setting),
                        "seed": run.overrides.get("seed"),
                        "metric": _num(final.get(metric)),
                        "top1": _num(final.get("eval/top1")),
                        "top5": _num(final.get("eval/top5")),
                        "train_loss": _final_train_loss(run),
                        "images_per_sec": _images_per_sec(run),
                        "wall_time_s": _num(run.wall_time_s),
                    }
                )
    frame = pd.DataFrame(records, columns=["setting_index", "setting", "seed", *_STATS])
    return frame.astype({k: float for k in _STATS} | {"setting_index": int})


def rows_of(study: StudyRuns, metric: str = "eval/top1") -> list[dict]:
    """One row per setting, in the study's order."""
    keys = _varying_keys(study.settings)
    frame = finals(study, metric)
    # NaN-skipping mean and sample std (ddof=1; NaN from a single value), one row per setting.
    stats = frame.groupby("setting_index", sort=False)[list(_STATS)].agg(["mean", "std"])
    stats = stats.reindex(range(len(study.settings)))
    rows = []
    for i, setting in enumerate(study.settings):
        runs = [r for r in study.runs if r.setting == setting]
        done = frame[frame["setting_index"] == i]
        row = {
            "study": study.name,
            "setting": label(setting),
            "label": label(setting, keys),
            "overrides": setting,
            "runs": len(runs),
            "seeds": len(done),
            "failed": sum(r.status == "failed" for r in runs),
            "unfinished": sum(r.final() is None and r.status != "failed" for r in runs),
            "metric": metric,
            "values": done["metric"].tolist(),
        }
        for name in ("metric", "top1", "top5", "train_loss"):
            row[f"{name}_mean"] = _stat(stats.at[i, (name, "mean")])
            row[f"{name}_std"] = _stat(stats.at[i, (name, "std")])
        row["images_per_sec"] = _stat(stats.at[i, ("images_per_sec", "mean")])
        row["wall_time_s"] = _stat(stats.at[i, ("wall_time_s", "mean")])
        row["params"] = next((r.params for r in runs if r.params is not None), None)
        row["gmacs"] = next((r.gmacs for r in runs if r.gmacs is not None), None)
        row["errors"] = [f"{r.name}: exit {r.exit_code}: {r.error}" for r in runs if r.status == "failed"]
        rows.append(row)
    return rows


def summarise(path: str, metric: str = "eval/top1") -> list[dict]:
    """The report's table rows for every study under `path` (for notebooks)."""
    return [row for study in load_studies(path) for row in rows_of(study, metric)]


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test: (t, Welch-Satterthwaite degrees of freedom, two-sided p)."""
    result = scipy.stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def _pairs(study: StudyRuns, rows: list[dict]) -> list[tuple[dict, dict]]:
    """Which settings to compare: with a BASELINE, every other setting with it; else each with the
    earliest earlier setting of its group that differs from it in the fewest keys (a one-factor study
    compares every level with the first; a factorial one, each change of one factor). Groups share the
    values of the study's COMPARE_WITHIN keys."""
    if study.baseline:
        base = [r for r in rows if all(r["overrides"].get(k) == v for k, v in study.baseline.items())]
        if len(base) != 1:
            raise ValueError(f"{study.name}: BASELINE {study.baseline} matches {len(base)} settings; it must name one")
        return [(base[0], r) for r in rows if r is not base[0]]
    group = lambda s: json.dumps([s.get(k) for k in study.compare_within], default=str)
    pairs = []
    for j, b in enumerate(rows):
        earlier = [a for a in rows[:j] if group(a["overrides"]) == group(b["overrides"])]
        if earlier:
            diff = lambda a, b=b: sum(
                a["overrides"].get(k, "<unset>") != b["overrides"].get(k, "<unset>")
                for k in set(a["overrides"]) | set(b["overrides"])
            )
            pairs.append((min(earlier, key=diff), b))
    return pairs


def _fmt(value: float | None, std: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    text = f"{value * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _is_fraction(metric: str) -> bool:
    return metric.split("/")[-1].startswith("top")


@dataclass
class Comparison:
    """Setting `b` against setting `a` on the per-seed final metric: Welch's t-test with the 95%
    confidence interval of the difference `b - a`, and the p-value after Holm's correction over every
    comparison of the report (`holm`)."""

    a: dict
    b: dict
    delta: float | None = None  # mean(b) - mean(a), in the metric's units
    ci: tuple[float, float] | None = None
    t: float | None = None
    df: float | None = None
    p: float | None = None
    p_holm: float | None = None
    note: str | None = None  # why there is no test


def comparison(a: dict, b: dict) -> Comparison:
    va, vb = [v for v in a["values"] if not math.isnan(v)], [v for v in b["values"] if not math.isnan(v)]
    if len(va) < 2 or len(vb) < 2:
        return Comparison(a, b, note="no verdict: each setting needs at least 2 finished seeds")
    delta = float(np.mean(vb) - np.mean(va))
    if np.std(va) == 0 and np.std(vb) == 0:
        note = "no seed-to-seed spread at all; " + ("identical" if delta == 0 else "the difference is exact")
        return Comparison(a, b, delta=delta, note=note)
    result = scipy.stats.ttest_ind(vb, va, equal_var=False)
    ci = result.confidence_interval(1 - ALPHA)
    return Comparison(
        a, b, delta, (float(ci.low), float(ci.high)), float(result.statistic), float(result.df), float(result.pvalue)
    )


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure"): the k-th smallest p times (m - k + 1), made monotone, capped at 1. scipy offers only the
    false-discovery-rate adjustments (`scipy.stats.false_discovery_control`)."""
    m = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * np.asarray(pvalues, float)[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def correct(comparisons: list[Comparison]) -> None:
    """Fills `p_holm` over the tested comparisons of the list (the report's family)."""
    tested = [c for c in comparisons if c.p is not None]
    for c, p in zip(tested, holm([c.p for c in tested]), strict=True):
        c.p_holm = p


def minimum_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float | None:
    """The smallest true difference of means a two-sided two-sample t-test at `alpha` detects with
    probability `power`, with `n` seeds per setting and a common standard deviation `sd` (from the
    noncentral t distribution, as power tables for the t-test are computed)."""
    if n < 2 or not sd or math.isnan(sd):
        return None
    df = 2 * n - 2
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    se = sd * math.sqrt(2.0 / n)

    def shortfall(delta):
        nc = delta / se
        tails = (scipy.stats.nct.sf(crit, df, nc), scipy.stats.nct.cdf(-crit, df, nc))
        return float(np.nansum(tails)) - power  # the far tail underflows to NaN for large nc

    return float(scipy.optimize.brentq(shortfall, 1e-9 * se, 20 * se))


def p_text(p: float, name: str = "p") -> str:
    """`p = 0.042`, or `p < 0.001` where three decimals would print 0.000."""
    return f"{name} < 0.001" if p < 0.0005 else f"{name} = {p:.3f}"


def describe(c: Comparison) -> str:
    """One sentence: the two means, the difference with its 95% interval, and the verdict after Holm."""
    a, b = c.a, c.b
    metric, pct = b["metric"], _is_fraction(b["metric"])
    scale, digits, unit = (100.0, 1, " points") if pct else (1.0, 3, "")
    head = (
        f"`{b['label']}` vs `{a['label']}`: {metric} {_fmt(b['metric_mean'], b['metric_std'], pct)} vs "
        f"{_fmt(a['metric_mean'], a['metric_std'], pct)} ({b['seeds']} and {a['seeds']} seeds)"
    )
    if c.delta is not None:
        head += f", a difference of {c.delta * scale:+.{digits}f}{unit}"
    if c.p is None:
        return f"{head}; {c.note}."
    low, high = (v * scale for v in c.ci)
    stats = f"95% CI [{low:+.{digits}f}, {high:+.{digits}f}], Welch's t = {c.t:.2f}, df = {c.df:.1f}, {p_text(c.p)}"
    adjusted = p_text(c.p_holm, "Holm-adjusted p") if c.p_holm is not None else "not corrected"
    if c.p_holm is not None and c.p_holm < ALPHA:
        return f"{head} ({stats}); significant after correction ({adjusted})."
    return f"{head} ({stats}); not significant after correction ({adjusted}): these seeds cannot tell the two apart."


def compare(a: dict, b: dict) -> str:
    """`describe` of one comparison on its own (a family of one: Holm changes nothing)."""
    c = comparison(a, b)
    correct([c])
    return describe(c)


# ----------------------------------------------------------------------------------------------------
# Curves and plots
# ----------------------------------------------------------------------------------------------------


def curve(runs: list[RunResult], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) of `key` over the finished runs (all runs when none has finished)."""
    chosen = [r for r in runs if r.final() is not None] or runs
    points = pd.DataFrame(
        [(r["step"], _num(r[key])) for run in chosen for r in run.records if key in r], columns=["step", "value"]
    ).dropna()
    if points.empty:
        return [], [], []
    by_step = points.groupby("step")["value"].agg(["mean", "std"])  # sorted by step
    return by_step.index.tolist(), by_step["mean"].tolist(), by_step["std"].fillna(0.0).tolist()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _legend_below(fig, ax, height: float) -> None:
    """The settings' legend under the plots: labels are long and curves fill the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not labels:
        fig.tight_layout()
        return
    ncol = 1 if max(map(len, labels)) > 60 else 2
    rows = math.ceil(len(labels) / ncol)
    fig.set_figheight(height + 0.22 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.22 * rows / (height + 0.22 * rows) + 0.01, 1, 1))


def plot(study: StudyRuns, rows: list[dict], out: str, metric: str) -> list[str]:
    """Writes `<study>_curves.png` (metric and train loss over steps) and `<study>_gmacs.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        runs = [r for r in study.runs if r.setting == row["overrides"]]
        for ax, key in zip(axes, (metric, "train/loss")):
            steps, mean, std = curve(runs, key)
            if not steps:
                continue
            (line,) = ax.plot(steps, mean, marker="o" if len(steps) < 15 else None, ms=3, label=row["label"])
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=line.get_color(),
                alpha=0.2,
            )
    for ax, key in zip(axes, (metric, "train/loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{study.name}: {metric} (mean ± std over seeds)")
    axes[1].set_title("train loss")
    if all(y > 0 for line in axes[1].get_lines() for y in line.get_ydata()) and axes[1].get_lines():
        axes[1].set_yscale("log")  # early losses can be orders of magnitude above the late ones
    _legend_below(fig, axes[0], 4.5)
    paths.append(os.path.join(out, f"{_safe(study.name)}_curves.png"))
    fig.savefig(paths[-1], dpi=110, metadata=PNG_METADATA)
    plt.close(fig)

    points = [r for r in rows if r["gmacs"] and r["metric_mean"] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r in points:
            ax.errorbar(r["gmacs"], r["metric_mean"], yerr=r["metric_std"] or 0.0, fmt="o", capsize=3, label=r["label"])
        gmacs = [r["gmacs"] for r in points]
        if max(gmacs) > 5 * min(gmacs):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("GMACs per image (inference)")
        ax.set_ylabel(f"final {metric}")
        ax.set_title(f"{study.name}: final {metric} (mean ± std over seeds) vs cost")
        ax.grid(alpha=0.3)
        _legend_below(fig, ax, 4.5)
        paths.append(os.path.join(out, f"{_safe(study.name)}_gmacs.png"))
        fig.savefig(paths[-1], dpi=110, metadata=PNG_METADATA)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------------


def describe_environment(env: dict) -> str:
    """One line: Python and library versions, CPU and its relevant flags, devices, XLA flags."""
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    devices = f"{env.get('device_count')} {env.get('platform')} device(s) in {env.get('process_count')} process(es)"
    if env.get("platform") != "cpu":
        devices += f" ({env.get('device_kind')})"
    flags = env.get("xla_flags") or "none"
    cpu = f"{env.get('cpu')} ({' '.join(env.get('cpu_flags', [])) or 'no listed flags'}; {env.get('cpu_count')} cores)"
    return f"Python {env.get('python')}, {packages}; CPU {cpu}; {devices}; XLA_FLAGS `{flags}`"


def _environment_lines(study: StudyRuns) -> list[str]:
    """Each distinct environment the study's runs recorded (without the commit and time), with its count."""
    seen: dict[str, int] = {}
    missing = 0
    for run in study.runs:
        if not run.environment:
            missing += 1
            continue
        text = describe_environment(run.environment)
        seen[text] = seen.get(text, 0) + 1
    lines = [f"Environment ({n} run{'s' if n > 1 else ''}): {text}." for text, n in seen.items()]
    if missing:
        lines.append(f"{missing} run{'s' if missing > 1 else ''} recorded no environment.")
    return lines + [""]


def _detectable_lines(rows: list[dict], metric: str) -> list[str]:
    """The minimum detectable difference at this study's seeds and pooled seed-to-seed spread."""
    done = [r for r in rows if r["seeds"] >= 2 and r["metric_std"] is not None]
    if not done:
        return []
    pct = _is_fraction(metric)
    scale, digits, unit = (100.0, 1, " points") if pct else (1.0, 3, "")
    seeds = min(r["seeds"] for r in done)
    pooled = math.sqrt(sum((r["seeds"] - 1) * r["metric_std"] ** 2 for r in done) / sum(r["seeds"] - 1 for r in done))
    mdd = minimum_detectable_difference(pooled, seeds)
    if mdd is None:
        return []
    return [
        (
            f"Minimum detectable difference: {mdd * scale:.{digits}f}{unit} of {metric} (80% power, two-sided "
            f"alpha {ALPHA} before correction, {seeds} seeds per setting, pooled seed-to-seed standard deviation "
            f"{pooled * scale:.{digits}f}{unit}); smaller true differences would mostly go unseen."
        ),
        "",
    ]


def _rank_lines(study: StudyRuns, rows: list[dict], metric: str) -> list[str]:
    """Spearman's rank correlation of the settings' mean final metric with the study's RANK_AGAINST
    reference numbers: the only basis on which the report lets a study claim a ranking."""
    ref = study.rank_against
    if not ref:
        return []
    pairs = [
        (r["metric_mean"], ref["values"][str(r["overrides"].get(ref["key"]))])
        for r in rows
        if r["metric_mean"] is not None and str(r["overrides"].get(ref["key"])) in ref["values"]
    ]
    if len(pairs) < 3:
        return [f"Rank against {ref['source']}: too few settings with both numbers ({len(pairs)}).", ""]
    result = scipy.stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    verdict = (
        "the ranks agree beyond chance"
        if result.pvalue < ALPHA and result.statistic > 0
        else "no evidence that this study ranks the settings as the reference does"
    )
    return [
        (
            f"Rank against {ref['source']}: Spearman's rho = {result.statistic:+.2f} over {len(pairs)} settings "
            f"(two-sided {p_text(result.pvalue)}): {verdict}."
        ),
        "",
    ]


def _study_section(
    study: StudyRuns,
    rows: list[dict],
    comparisons: list[Comparison],
    family: int,
    images: list[str],
    out: str,
    metric: str,
) -> list[str]:
    lines = [f"## {study.name}", ""]
    lines += _environment_lines(study)
    m = study.manifest
    if m:
        commits = sorted({r.get("commit") for r in m["runs"] if r.get("commit")})
        lines += [
            (
                f"Study `{os.path.relpath(m['study_file'], m['root'])}` on `{m['base_config']}`; "
                f"command: `{m['command']}`."
            ),
            (
                f"Runs started from commit{'s' if len(commits) > 1 else ''} "
                f"{', '.join(f'`{c}`' for c in commits) or 'unknown'}."
            ),
            "",
        ]
        varied = {k for run in study.runs for k in run.overrides}  # what some setting sets itself
        shared = [f"`{k}={_show(v)}`" for k, v in m.get("overrides", {}).items() if k not in varied]
        shared += [f"`{k}={v}`" for k, v in m.get("flags", {}).items()]
        defaults = [f"`{k}={_show(v)}`" for k, v in m.get("overrides", {}).items() if k in varied]
        if shared:
            lines += ["Every run: " + ", ".join(shared) + ".", ""]
        if defaults:
            lines += ["Where a setting does not say otherwise: " + ", ".join(defaults) + ".", ""]
    pct = _is_fraction(metric)
    extra = metric not in ("eval/top1", "eval/top5")
    header = (
        ["setting", "seeds", "top-1 %", "top-5 %"]
        + ([metric] if extra else [])
        + [f"{metric} per seed", "train loss", "params", "GMACs", "img/s", "wall s", "failed"]
    )
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = [
            f"`{r['label']}`",
            f"{r['seeds']}/{r['runs']}",
            _fmt(r["top1_mean"], r["top1_std"], True),
            _fmt(r["top5_mean"], r["top5_std"], True),
        ]
        if extra:
            cells.append(_fmt(r["metric_mean"], r["metric_std"], pct))
        cells.append(", ".join(_fmt(v, None, pct) for v in r["values"]) or "-")
        cells += [
            _fmt(r["train_loss_mean"], r["train_loss_std"], False),
            f"{r['params']:,}" if r["params"] is not None else "-",
            f"{r['gmacs']:.4f}" if r["gmacs"] is not None else "-",
            f"{r['images_per_sec']:.0f}" if r["images_per_sec"] is not None else "-",
            f"{r['wall_time_s']:.0f}" if r["wall_time_s"] is not None else "-",
            str(r["failed"]) + (f" ({r['unfinished']} unfinished)" if r["unfinished"] else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Mean ± sample standard deviation over the finished seeds; final eval after the last step. "
            "Train loss: the last logging window. img/s: median training throughput after the first "
            "window (which includes compiling). Wall s: per run, all attempts, start-up included."
        ),
        "",
    ]
    lines += _detectable_lines(rows, metric)
    lines += _rank_lines(study, rows, metric)
    if comparisons:
        lines += [
            (
                f"Comparisons: Welch's t-test on the per-seed final {metric}, two-sided, with the 95% "
                f"confidence interval of the difference; significant when the p-value after Holm's "
                f"correction over all {family} tests of this report is below {ALPHA}. Runs shared between "
                "studies make their tests dependent; Holm's correction holds regardless."
            ),
            "",
        ]
        lines += [f"- {describe(c)}" for c in comparisons] + [""]
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        lines += ["Failed runs:", ""] + [f"- {e}" for e in errors] + [""]
    lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, out)})" for p in images] + [""]
    return lines


def write_report(path: str, out: str | None = None, metric: str = "eval/top1") -> str:
    """Writes report.md and the plots into `out` (default: `path`); returns report.md's path."""
    studies = load_studies(path)
    out = out or path
    os.makedirs(out, exist_ok=True)
    lines = [
        "# Experiment report",
        "",
        (
            f"Generated by `inception-report` from {sum(len(s.runs) for s in studies)} runs "
            f"in {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}."
        ),
        "",
    ]
    tables = []
    for study in studies:
        rows = rows_of(study, metric)
        tables.append((study, rows, [comparison(a, b) for a, b in _pairs(study, rows)]))
    family = [c for _, _, comparisons in tables for c in comparisons]
    correct(family)
    tested = sum(c.p is not None for c in family)
    for study, rows, comparisons in tables:
        lines += _study_section(study, rows, comparisons, tested, plot(study, rows, out, metric), out, metric)
    target = os.path.join(out, "report.md")
    with open(target, "w") as f:
        f.write("\n".join(lines))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inception-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a sweep directory, a directory of them, or a directory of run workdirs")
    parser.add_argument("--out", default=None, help="where report.md and the PNGs go (default: DIR)")
    parser.add_argument("--metric", default="eval/top1", help="the metric plotted and compared (default eval/top1)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.dir, args.out, args.metric))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
