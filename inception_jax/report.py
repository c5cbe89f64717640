"""Study reports: `python -m inception_jax.report DIR [--out DIR] [--metric eval/top1]`.

Reads what runs leave on disk (each workdir's `config.json` and `metrics.jsonl`, and the sweep's
`sweep.json` when there is one) and writes `report.md` plus PNG plots: per study, a table with one row
per setting (a run's overrides other than `seed`) giving the mean and standard deviation over seeds;
the metric over steps (mean over seeds, band of one standard deviation); the final metric against
GMACs; and one sentence per comparison saying whether the difference exceeds the seed-to-seed spread
(Welch's t-test, two-sided, p < 0.05). `summarise(DIR)` returns the table rows for a notebook.

DIR is a sweep directory, a directory of sweep directories, or a directory of plain workdirs (their
settings are then the config fields that differ between them). Imports no trainer; matplotlib only
when plotting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

from inception_jax import sweep
from inception_jax.metrics import CONFIG_FILE, METRICS_FILE

ALPHA = 0.05  # two-sided significance level of the comparisons


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

    @property
    def setting(self) -> dict:
        return sweep.setting_of(self.overrides)

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


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
    """metrics.jsonl; a torn last line (a killed run) is skipped. Non-finite values are stored as text."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def load_studies(path: str) -> list[StudyRuns]:
    """Every study under `path`: a sweep directory, a directory of them, or a directory of workdirs."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory")
    if os.path.exists(os.path.join(path, sweep.MANIFEST)):
        return [_load_sweep(path)]
    subdirs = sorted(os.path.join(path, d) for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    sweeps = [_load_sweep(d) for d in subdirs if os.path.exists(os.path.join(d, sweep.MANIFEST))]
    if sweeps:
        return sweeps
    plain = [d for d in subdirs if os.path.exists(os.path.join(d, CONFIG_FILE))]
    if not plain:
        raise FileNotFoundError(f"{path} holds no {sweep.MANIFEST} and no run directory with a {CONFIG_FILE}")
    return [_load_plain(path, plain)]


def _load_sweep(directory: str) -> StudyRuns:
    manifest = sweep.read_manifest(directory)
    runs = []
    for rec in manifest["runs"]:
        workdir = os.path.join(directory, rec["workdir"])
        status = rec["status"]
        if status != "done" and sweep.finished_on_disk(workdir, rec.get("total_steps")):
            status = "done"  # finished by a SLURM array task since the manifest was written
        runs.append(RunResult(
            name=rec["name"], workdir=workdir, overrides=rec["overrides"], status=status,
            records=_read_jsonl(os.path.join(workdir, METRICS_FILE)), config=_read_json(os.path.join(workdir, CONFIG_FILE)),
            exit_code=rec.get("exit_code"), error=rec.get("error"), wall_time_s=rec.get("wall_time_s"),
            params=rec.get("params"), gmacs=rec.get("gmacs")))
    return StudyRuns(manifest.get("study", os.path.basename(directory)), directory, runs, manifest,
                     tuple(manifest.get("compare_within", ())), _settings_in_order(runs))


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
    configs = {d: _flat(_read_json(os.path.join(d, CONFIG_FILE))) for d in workdirs}
    keys = sorted({k for c in configs.values() for k in c} - _NOT_SETTINGS)
    varying = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]
    runs = []
    for d in workdirs:
        records = _read_jsonl(os.path.join(d, METRICS_FILE))
        run = RunResult(os.path.basename(d), d, {k: configs[d].get(k) for k in varying}, "unknown", records,
                        _read_json(os.path.join(d, CONFIG_FILE)))
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


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # sample std


def _images_per_sec(run: RunResult) -> float:
    """Median over logging windows after the first (which includes compiling)."""
    rates = [_num(r["perf/images_per_sec"]) for r in run.records if "perf/images_per_sec" in r][1:]
    rates = sorted(v for v in rates if not math.isnan(v))
    if not rates:
        return math.nan
    mid = len(rates) // 2
    return rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2


def _final_train_loss(run: RunResult) -> float:
    losses = [r for r in run.records if "train/loss" in r]
    return _num(losses[-1]["train/loss"]) if losses else math.nan


def _show(value) -> str:
    """A value as its `--config.x=` text; JSON turned the overrides' tuples into lists."""
    return sweep.flag_value(tuple(value) if isinstance(value, list) else value)


def label(setting: dict, keys: list[str] | None = None) -> str:
    """`key=value,...` over `keys` (the ones that vary within the study), or `base`."""
    shown = {k: v for k, v in setting.items() if keys is None or k in keys}
    return ",".join(f"{k}={_show(v)}" for k, v in sweep.ordered(shown)) or "base"


def _varying_keys(settings: list[dict]) -> list[str]:
    keys = sorted({k for s in settings for k in s})
    return [k for k in keys if len({json.dumps(s.get(k, "<unset>"), default=str) for s in settings}) > 1] or keys


def rows_of(study: StudyRuns, metric: str = "eval/top1") -> list[dict]:
    """One row per setting, in the study's order."""
    keys = _varying_keys(study.settings)
    rows = []
    for setting in study.settings:
        runs = [r for r in study.runs if r.setting == setting]
        finals = [(r, r.final()) for r in runs]
        done = [(r, f) for r, f in finals if f is not None]
        row = {"study": study.name, "setting": label(setting), "label": label(setting, keys),
               "overrides": setting, "runs": len(runs), "seeds": len(done),
               "failed": sum(r.status == "failed" for r in runs),
               "unfinished": sum(f is None and r.status != "failed" for r, f in finals),
               "metric": metric, "values": [_num(f.get(metric)) for _, f in done]}
        for key, name in ((metric, "metric"), ("eval/top1", "top1"), ("eval/top5", "top5")):
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([_num(f.get(key)) for _, f in done])
        row["train_loss_mean"], row["train_loss_std"] = _mean_std([_final_train_loss(r) for r, _ in done])
        row["images_per_sec"], _ = _mean_std([_images_per_sec(r) for r, _ in done])
        row["wall_time_s"], _ = _mean_std([_num(r.wall_time_s) for r, _ in done])
        row["params"] = next((r.params for r in runs if r.params is not None), None)
        row["gmacs"] = next((r.gmacs for r in runs if r.gmacs is not None), None)
        row["errors"] = [f"{r.name}: exit {r.exit_code}: {r.error}" for r in runs if r.status == "failed"]
        rows.append(row)
    return rows


def summarise(path: str, metric: str = "eval/top1") -> list[dict]:
    """The report's table rows for every study under `path` (for notebooks)."""
    return [row for study in load_studies(path) for row in rows_of(study, metric)]


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test: (t, degrees of freedom, two-sided p)."""
    from scipy import stats  # installed with scikit-learn, a dependency

    result = stats.ttest_ind(a, b, equal_var=False)
    va, vb = _mean_std(a)[1] ** 2 / len(a), _mean_std(b)[1] ** 2 / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.inf
    return float(result.statistic), df, float(result.pvalue)


def _pairs(study: StudyRuns, rows: list[dict]) -> list[tuple[dict, dict]]:
    """Which settings to compare: each with the earliest earlier setting of its group that differs from it
    in the fewest keys (a one-factor study compares every level with the first; a factorial one,
    each change of one factor). Groups share the values of the study's COMPARE_WITHIN keys."""
    group = lambda s: json.dumps([s.get(k) for k in study.compare_within], default=str)
    pairs = []
    for j, b in enumerate(rows):
        earlier = [a for a in rows[:j] if group(a["overrides"]) == group(b["overrides"])]
        if earlier:
            diff = lambda a: sum(a["overrides"].get(k, "<unset>") != b["overrides"].get(k, "<unset>")
                                 for k in set(a["overrides"]) | set(b["overrides"]))
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


def compare(a: dict, b: dict) -> str:
    """One sentence: is `b`'s mean different from `a`'s by more than the seed-to-seed spread?"""
    metric, pct = b["metric"], _is_fraction(b["metric"])
    unit = " points" if pct else ""
    head = (f"`{b['label']}` vs `{a['label']}`: {metric} {_fmt(b['metric_mean'], b['metric_std'], pct)} vs "
            f"{_fmt(a['metric_mean'], a['metric_std'], pct)} ({b['seeds']} and {a['seeds']} seeds)")
    va, vb = [v for v in a["values"] if not math.isnan(v)], [v for v in b["values"] if not math.isnan(v)]
    if len(va) < 2 or len(vb) < 2:
        return head + "; no verdict: each setting needs at least 2 finished seeds."
    delta = (b["metric_mean"] - a["metric_mean"]) * (100.0 if pct else 1.0)
    head += f", a difference of {delta:+.{1 if pct else 3}f}{unit}"
    if a["metric_std"] == 0 and b["metric_std"] == 0:
        verdict = "no seed-to-seed spread at all; " + ("identical." if delta == 0 else "the difference is real.")
        return f"{head}; {verdict}"
    t, df, p = welch(vb, va)
    if p < ALPHA:
        return f"{head}; larger than the seed-to-seed spread (Welch's t = {t:.2f}, df = {df:.1f}, p = {p:.3f})."
    return (f"{head}; within the seed-to-seed spread (Welch's t = {t:.2f}, df = {df:.1f}, p = {p:.2f}): "
            "these seeds cannot tell the two apart.")


# ----------------------------------------------------------------------------------------------------
# Curves and plots
# ----------------------------------------------------------------------------------------------------


def curve(runs: list[RunResult], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) of `key` over the finished runs (all runs when none has finished)."""
    chosen = [r for r in runs if r.final() is not None] or runs
    by_step: dict[int, list[float]] = {}
    for run in chosen:
        for r in run.records:
            if key in r and not math.isnan(_num(r[key])):
                by_step.setdefault(r["step"], []).append(_num(r[key]))
    steps = sorted(by_step)
    stats = [_mean_std(by_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [s or 0.0 for _, s in stats]


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
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2)
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
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    points = [r for r in rows if r["gmacs"] and r["metric_mean"] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r in points:
            ax.errorbar(r["gmacs"], r["metric_mean"], yerr=r["metric_std"] or 0.0, fmt="o", capsize=3,
                        label=r["label"])
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
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------------


def _study_section(study: StudyRuns, rows: list[dict], images: list[str], out: str, metric: str) -> list[str]:
    lines = [f"## {study.name}", ""]
    m = study.manifest
    if m:
        commits = sorted({r.get("commit") for r in m["runs"] if r.get("commit")})
        lines += [f"Study `{os.path.relpath(m['study_file'], m['root'])}` on `{m['base_config']}`; "
                  f"command: `{m['command']}`.",
                  f"Runs started from commit{'s' if len(commits) > 1 else ''} "
                  f"{', '.join(f'`{c}`' for c in commits) or 'unknown'}.", ""]
        if m.get("overrides"):
            lines += ["Every run: " + ", ".join(f"`{k}={_show(v)}`" for k, v in m["overrides"].items())
                      + "".join(f", `{k}={v}`" for k, v in m.get("flags", {}).items()) + ".", ""]
    pct = _is_fraction(metric)
    extra = metric not in ("eval/top1", "eval/top5")
    header = ["setting", "seeds", "top-1 %", "top-5 %"] + ([metric] if extra else []) + \
        ["train loss", "params", "GMACs", "img/s", "wall s", "failed"]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = [f"`{r['label']}`", f"{r['seeds']}/{r['runs']}", _fmt(r["top1_mean"], r["top1_std"], True),
                 _fmt(r["top5_mean"], r["top5_std"], True)]
        if extra:
            cells.append(_fmt(r["metric_mean"], r["metric_std"], pct))
        cells += [_fmt(r["train_loss_mean"], r["train_loss_std"], False),
                  f"{r['params']:,}" if r["params"] is not None else "-",
                  f"{r['gmacs']:.4f}" if r["gmacs"] is not None else "-",
                  f"{r['images_per_sec']:.0f}" if r["images_per_sec"] is not None else "-",
                  f"{r['wall_time_s']:.0f}" if r["wall_time_s"] is not None else "-",
                  str(r["failed"]) + (f" ({r['unfinished']} unfinished)" if r["unfinished"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over the finished seeds; final eval after the last step. "
              "Train loss: the last logging window. img/s: median training throughput after the first "
              "window (which includes compiling). Wall s: per run, all attempts, start-up included.", ""]
    pairs = _pairs(study, rows)
    if pairs:
        lines += [f"Comparisons (Welch's t-test on the per-seed final {metric}, two-sided, p < {ALPHA}):", ""]
        lines += [f"- {compare(a, b)}" for a, b in pairs] + [""]
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
    lines = ["# Experiment report", "",
             f"Generated by `python -m inception_jax.report` from {sum(len(s.runs) for s in studies)} runs "
             f"in {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}.", ""]
    for study in studies:
        rows = rows_of(study, metric)
        lines += _study_section(study, rows, plot(study, rows, out, metric), out, metric)
    target = os.path.join(out, "report.md")
    with open(target, "w") as f:
        f.write("\n".join(lines))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.report", description=__doc__.splitlines()[0])
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
