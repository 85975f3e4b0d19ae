"""`flexserve report`: the variant table and the project's targets for it, measured on this machine.

For every variant: the test metric from the manifest (measured in ONNX Runtime at build
time), parameters, file size, and ONNX Runtime CPU p50 latency for one typical request and
for 32 of them, on one intra-op thread (how serving runs a request). Variants of a family
are timed round-robin in the same loop, so a noisy neighbour slows them all alike and the
ratios hold. Then each target is checked and printed PASS, FAIL or NOT MEASURED (what this build did not measure).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from contract.manifest import Manifest
from contract.sessions import open_session
from contract.statistics import Interval, paired_difference
from loadtest.payloads import adapter
from serving.repository import Repository, load_repository
from training.progress import Progress

BATCH_SIZES = (1, 32)
# The built-in families' accuracy targets for their full models.
TRAINED_FLOORS = {
    "cnn": ("accuracy >= 0.91", lambda m: m >= 0.91),
    "rnn": ("accuracy >= 0.74", lambda m: m >= 0.74),
    "recsys": ("RMSE <= 0.94", lambda m: m <= 0.94),
    "digits": ("accuracy >= 0.97", lambda m: m >= 0.97),
    "text_multitask": ("mean_accuracy >= 0.8", lambda m: m >= 0.8),
}
WARMUP = 3
# The full model must cost more than the HTTP path a request pays anyway (a bare BentoML endpoint's
# round trip, measured in the same run): else routing to a cheaper variant saves little per request.
FULL_OVER_HTTP = 1.0
# What distillation must add over the same student without a teacher (issue 15): accuracy +0.5
# points for the classifiers, RMSE 0.005 lower for the recommender.
DISTILLATION_GAIN = {"cnn": 0.005, "rnn": 0.005, "recsys": 0.005}
# What transfer must add over training from scratch (issue 16), by labels per class: +10 points with
# 10 labels per class (the whole interval above 0), and no more than 0.5 points lost with all of them.
TRANSFER_GAIN = {"10": 0.10, "all": -0.005}
# A multi-task model against its heads as single-task models (issue 16): each head within 1 point, at
# most 0.6x their combined parameters and their combined latency for one request answering both.
MULTITASK_WITHIN, MULTITASK_SHARE = 0.01, 0.6
# A target row's verdict: met, missed, or (None) not measured by this repository's build.
VERDICTS = {True: "PASS", False: "FAIL", None: "NOT MEASURED"}


def measure_latencies(repo: Repository, rounds: int) -> dict[str, dict[int, float]]:
    """p50 ms per variant per batch size (in requests), variants of a family interleaved."""
    rng = np.random.default_rng(0)
    result: dict[str, dict[int, float]] = {}
    manifest = repo.manifest
    progress = Progress(len(manifest.families) * len(BATCH_SIZES), "report", unit="point")
    for family, section in manifest.families.items():
        sessions = {v.name: open_session(repo.root / v.onnx, threads=1) for v in section.variants}
        typical = adapter(repo, family)
        for batch in BATCH_SIZES:
            feed = typical.typical_feeds(batch * section.rows_per_request, rng)
            times: dict[str, list[float]] = {name: [] for name in sessions}
            runs = max(5, rounds if batch == 1 else rounds // 4)
            for round_index in range(WARMUP + runs):
                for name, sess in sessions.items():
                    start = time.perf_counter()
                    sess.run(None, feed)
                    if round_index >= WARMUP:
                        times[name].append((time.perf_counter() - start) * 1e3)
            for name, samples in times.items():
                result.setdefault(name, {})[batch] = float(np.median(samples))
            progress.update(1, note=f"{family} batch {batch}: {runs} rounds")
    progress.close()
    return result


def http_floor(repo: Repository, families: list[str], rounds: int) -> dict[str, tuple[float, float]]:
    """Per family: (p50 ms of a bare BentoML endpoint answering the family's typical request body, one
    kept-alive connection at a time; p50 ms of its full fp32 model in ONNX Runtime on one thread), the
    two interleaved round by round so that both see the same machine. The endpoint is
    `loadtest.bench_gateway:Echo`, started here: the HTTP path every request pays before any model runs."""
    import http.client

    from loadtest.bench_gateway import ROOT
    from loadtest.payloads import typical_requests
    from loadtest.servers import ServerProcess

    bodies = typical_requests(repo, np.random.default_rng(0))
    out: dict[str, tuple[float, float]] = {}
    with ServerProcess("loadtest.bench_gateway:Echo", cwd=ROOT) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for family in families:
                body = json.dumps(bodies[family][1])
                section = repo.family(family)
                session = open_session(repo.root / section.variant(f"{family}_full_fp32").onnx, threads=1)
                feed = adapter(repo, family).typical_feeds(section.rows_per_request, np.random.default_rng(0))
                echo, model = [], []
                for round_index in range(WARMUP + rounds):
                    start = time.perf_counter()
                    connection.request("POST", "/v1/echo", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    middle = time.perf_counter()
                    session.run(None, feed)
                    end = time.perf_counter()
                    if response.status != 200:
                        raise RuntimeError(f"the echo endpoint answered {response.status} to {family}'s request")
                    if round_index >= WARMUP:
                        echo.append((middle - start) * 1e3)
                        model.append((end - middle) * 1e3)
                out[family] = (float(np.median(echo)), float(np.median(model)))
        finally:
            connection.close()
    return out


def _targets(
    manifest: Manifest, latency: dict[str, dict[int, float]], floor: dict[str, tuple[float, float]]
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each built-in family trained here (imported families have no
    training targets: they are reported in the table only)."""
    rows = []
    for family, section in manifest.families.items():
        if family not in TRAINED_FLOORS or not section.training:
            continue
        variants = {v.name: v for v in section.variants}
        metric = section.metric
        full, student = variants[f"{family}_full_fp32"], variants[f"{family}_distilled_fp32"]
        full_m, student_m = full.metrics[metric], student.metrics[metric]
        label, ok = TRAINED_FLOORS[family]
        rows.append((f"{family} full {label}", f"{full_m:.4f}", ok(full_m)))
        if family in floor:  # what routing to a cheaper variant can save, against what every request pays
            echo_ms, full_ms = floor[family]
            rows.append(
                (
                    f"{family} full model >= {FULL_OVER_HTTP:g}x the bare HTTP round trip",
                    f"{full_ms / echo_ms:.2f}x ({full_ms:.2f} vs {echo_ms:.2f} ms, same run)",
                    full_ms / echo_ms >= FULL_OVER_HTTP,
                )
            )
        rows.append(
            (
                f"{family} student >= 3x fewer params",
                f"{full.params / student.params:.1f}x",
                full.params / student.params >= 3,
            )
        )
        speedup = latency[full.name][1] / latency[student.name][1]
        rows.append((f"{family} student >= 2x faster at batch 1", f"{speedup:.1f}x", speedup >= 2))
        if section.higher_is_better:
            kept = student_m / full_m
            rows.append((f"{family} student keeps >= 97% of accuracy", f"{kept:.1%}", kept >= 0.97))
        else:
            rows.append(
                (f"{family} student RMSE <= full + 0.03", f"+{student_m - full_m:.4f}", student_m - full_m <= 0.03)
            )
        if family in DISTILLATION_GAIN:
            rows.append(distillation_target(family, section))
        rows += transfer_targets(family, section)
        rows += multitask_targets(family, section)
        for kind in ("full", "distilled"):
            parent = variants[f"{family}_{kind}_fp32"].metrics[metric]
            for precision, limit in (("fp16", 0.003), ("int8", 0.01)):
                # Points of accuracy; for RMSE the same absolute limits.
                delta = abs(variants[f"{family}_{kind}_{precision}"].metrics[metric] - parent)
                rows.append(
                    (
                        f"{family}_{kind}_{precision} within {limit * 100:g} point(s) of fp32",
                        f"{delta * 100:.2f} points" if section.higher_is_better else f"{delta:.4f}",
                        delta <= limit,
                    )
                )
    return rows


def distillation_gain(section) -> Interval:
    """Distilled minus the same student without a teacher, per seed (PyTorch, test split), as a gain:
    accuracy points up, or RMSE down. One seed (or a manifest from before seeds): an unbounded interval."""
    seeds = section.training.get("seeds") or {
        "distilled": [section.training["distilled"]["test_metric_pytorch"]],
        "student_without_distillation": [section.training["student_without_distillation"]["test_metric_pytorch"]],
    }
    kd, plain = seeds["distilled"], seeds["student_without_distillation"]
    return paired_difference(kd, plain) if section.higher_is_better else paired_difference(plain, kd)


def distillation_target(family: str, section) -> tuple[str, str, bool]:
    """Met only when the whole 95% interval of the paired gain is above 0 and its mean reaches the
    family's target gain (`DISTILLATION_GAIN`): no target passes on one run's luck."""
    gain, need = distillation_gain(section), DISTILLATION_GAIN[family]
    unit, scale = ("points", 100) if section.higher_is_better else ("RMSE", 1)
    name = f"{family} distillation gain >= {need * scale:g} {unit}, 95% interval above 0"
    if gain.n < 2:
        return name, "1 seed: no interval (flexserve train --seeds 3)", False
    measured = f"{gain.mean * scale:+.3g} [{gain.low * scale:+.3g}, {gain.high * scale:+.3g}] {unit}, {gain.n} seeds"
    return name, measured, gain.above(0.0) and gain.mean >= need


def transfer_path(study: dict, budget: str) -> str:
    """The transferred path a budget's comparison uses: of frozen and fine-tuned, the one with the
    better mean validation metric (the rule that picks the family's full model, without scratch)."""
    return max(("frozen", "finetune"), key=lambda p: np.mean(study["val"][p][budget]))


def transfer_gain(study: dict, budget: str) -> tuple[str, Interval]:
    path = transfer_path(study, budget)
    return path, paired_difference(study["test"][path][budget], study["test"]["scratch"][budget])


def transfer_targets(family: str, section) -> list[tuple[str, str, bool | None]]:
    """A transferred family's label-efficiency targets (TRANSFER_GAIN): at 10 labels per class the
    mean gain and the whole interval must clear the bar; with all labels the mean loss must stay under it."""
    study = (section.training.get("transfer") or {}).get("study")
    if not study:
        return []
    rows = []
    for budget, need in TRANSFER_GAIN.items():
        if budget not in study["test"]["scratch"]:
            continue
        path, gain = transfer_gain(study, budget)
        name = f"{family} transfer at {budget} labels/class >= {need * 100:+g} points vs scratch" + (
            ", 95% interval above 0" if need > 0 else ""
        )
        if gain.n < 2:
            rows.append((name, f"{path} {gain.mean * 100:+.2f} points, 1 seed: no interval", False))
            continue
        measured = (
            f"{path} {gain.mean * 100:+.2f} [{gain.low * 100:+.2f}, {gain.high * 100:+.2f}] points, {gain.n} seeds"
        )
        rows.append((name, measured, gain.mean >= need and (need <= 0 or gain.above(0.0))))
    return rows


def multitask_targets(family: str, section) -> list[tuple[str, str, bool | None]]:
    info = (section.training or {}).get("multitask")
    if not info:
        return []
    if "single_task" not in info:
        how = f"not in this build: `flexserve train --family {family} --compare-single-task` trains them"
        return [
            (
                f"{family} within {MULTITASK_WITHIN * 100:g} point of single-task models, at a share of their costs",
                how,
                None,
            )
        ]
    own, singles = info["multitask"], info["single_task"]
    rows = []
    for head, single in singles.items():
        mine = own[f"{head}_{single['metric']}"]
        delta = mine - single["test_metric"]
        rows.append(
            (
                f"{family} {head} {single['metric']} within {MULTITASK_WITHIN * 100:g} point of its single-task model",
                f"{delta * 100:+.2f} points ({mine:.4f} vs {single['test_metric']:.4f})",
                delta >= -MULTITASK_WITHIN,
            )
        )
    for what, unit in (("params", ""), ("latency_ms", " ms")):
        combined = sum(s[what] for s in singles.values())
        share = own[what] / combined
        rows.append(
            (
                f"{family} {what} <= {MULTITASK_SHARE:g}x the single-task models' combined",
                f"{share:.2f}x ({own[what]:,}{unit} vs {combined:,}{unit})",
                share <= MULTITASK_SHARE,
            )
        )
    return rows


def multitask_table(manifest: Manifest) -> str:
    """Per multi-task family: each head's metric, parameters and latency, multi-task against single-task."""
    lines = []
    for family, section in manifest.families.items():
        info = section.training.get("multitask") if section.training else None
        if not info or "single_task" not in info:
            continue
        own, singles = info["multitask"], info["single_task"]
        heads = list(singles)
        lines += [
            f"{family}: one multi-task model against single-task models of the same encoder ({info['latency']})",
            "",
            "| model | "
            + " | ".join(f"{h} {singles[h]['metric']}" for h in heads)
            + " | params | latency, both answers (ms) |",
            "|---|" + "---:|" * (len(heads) + 2),
            "| multi-task | "
            + " | ".join(f"{own[h + '_' + singles[h]['metric']]:.4f}" for h in heads)
            + f" | {own['params']:,} | {own['latency_ms']:.3f} |",
        ]
        for h in heads:
            cells = [f"{singles[h]['test_metric']:.4f}" if other == h else "-" for other in heads]
            lines.append(
                f"| single-task {h} | " + " | ".join(cells) + f" | {singles[h]['params']:,} | "
                f"{singles[h]['latency_ms']:.3f} |"
            )
        combined_p = sum(s["params"] for s in singles.values())
        combined_l = sum(s["latency_ms"] for s in singles.values())
        lines += [f"| both single-task |{' |' * len(heads)} {combined_p:,} | {combined_l:.3f} |", ""]
    return "\n".join(lines)


def transfer_table(manifest: Manifest) -> str:
    """Per transferred family: each path's mean test metric (and range over seeds) at each label budget."""
    lines = []
    for family, section in manifest.families.items():
        info = section.training.get("transfer") if section.training else None
        if not info:
            continue
        study = info["study"]
        budgets = [str(b) for b in study["budgets"]]
        lines += [
            f"{family}: transferred from {info['source']['family']} ({info['source']['checkpoint']}, sha256 "
            f"{info['source']['sha256'][:12]}...), served: {info['path']} at {info['label_budget']} labels/class; "
            f"test {study['metric']}, mean [min, max] over seeds {study['seeds']}",
            "",
            "| path | " + " | ".join(f"{b} labels/class" for b in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        for path, by_budget in study["test"].items():
            cells = [f"{np.mean(by_budget[b]):.4f} [{min(by_budget[b]):.4f}, {max(by_budget[b]):.4f}]" for b in budgets]
            lines.append(f"| {path} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_label_efficiency(manifest: Manifest, path: Path) -> bool:
    """Accuracy against labels per class, one line per path, error bars the range over seeds."""
    families = [(f, s) for f, s in manifest.families.items() if s.training and s.training.get("transfer")]
    if not families:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.4), squeeze=False)
    for ax, (family, section) in zip(axes[0], families, strict=True):
        study = section.training["transfer"]["study"]
        budgets = [str(b) for b in study["budgets"]]
        # "all" sits at the whole training split's rows per class (balanced to within a few rows).
        every = study.get("all_per_class") or section.dataset["rows"]["train"] / len(section.contract["labels"])
        xs = [every if b == "all" else float(b) for b in budgets]
        order = np.argsort(xs)
        for name, by_budget in study["test"].items():
            values = [np.array(by_budget[budgets[i]]) * 100 for i in order]
            means = np.array([v.mean() for v in values])
            err = np.array([means - [v.min() for v in values], [v.max() for v in values] - means])
            ax.errorbar(np.array(xs)[order], means, yerr=err, marker="o", capsize=4, label=name)
        ax.set_xscale("log")
        ax.set_xticks(np.array(xs)[order], [budgets[i] for i in order])
        ax.set_xlabel("labels per class (log scale)")
        ax.set_ylabel(f"test {study['metric']} (%)")
        ax.set_title(
            f"{family} from {section.training['transfer']['source']['family']}: mean, range over "
            f"{len(study['seeds'])} seed(s)",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _tables(manifest: Manifest, latency: dict[str, dict[int, float]], targets: list) -> str:
    lines = [
        "| variant | test metric | params | file size | p50 batch 1 (ms) | p50 batch 32 (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for section in manifest.families.values():
        for v in section.variants:
            lines.append(
                f"| {v.name} | {section.metric} {v.metrics[section.metric]:.4f} | "
                f"{v.params:,} | {v.size_bytes / 1e6:.2f} MB | {latency[v.name][1]:.3f} | "
                f"{latency[v.name][32]:.2f} |"
            )
    for table in (transfer_table(manifest), multitask_table(manifest)):
        if table:
            lines += ["", table]
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {VERDICTS[ok]} |" for name, measured, ok in targets]
    return "\n".join(lines)


def _plot(manifest: Manifest, latency: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    families = list(manifest.families)
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.4), squeeze=False)
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    colours = {"full": "tab:blue", "distilled": "tab:orange"}
    label_offsets = {"fp32": (6, 5), "fp16": (6, -11), "int8": (6, 5)}  # fp32 and fp16 often coincide
    for ax, family in zip(axes[0], families, strict=True):
        section = manifest.families[family]
        for v in section.variants:
            x, y = latency[v.name][1], v.metrics[section.metric]
            ax.scatter(
                x, y, marker=markers.get(v.precision, "D"), color=colours.get(v.kind, "tab:green"), s=70, zorder=3
            )
            ax.annotate(
                v.precision,
                (x, y),
                fontsize=8,
                xytext=label_offsets.get(v.precision, (6, 5)),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25, y=0.2)
        if not section.higher_is_better:
            ax.invert_yaxis()  # better is up in every panel
        ax.set_xlabel("ONNX Runtime CPU p50 per typical request (ms, log scale)")
        ax.set_ylabel(
            f"test {section.metric}" + (" (lower is better, axis inverted)" if not section.higher_is_better else "")
        )
        ax.set_title(f"{family}: {section.contract.get('typical_request', '')}", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=k) for k, c in colours.items()]
    handles += [Line2D([], [], color="grey", marker=m, linestyle="", label=p) for p, m in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False)
    fig.suptitle("FlexServe variants: accuracy against latency (up and left is better)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


def report(
    repo: Path,
    markdown: Path | None = None,
    plot: Path | None = None,
    json_out: Path | None = None,
    rounds: int = 40,
) -> int:
    repository = load_repository(repo, verify=False)
    manifest = repository.manifest
    latency = measure_latencies(repository, rounds)
    trained = [f for f, section in manifest.families.items() if f in TRAINED_FLOORS and section.training]
    floor = http_floor(repository, trained, rounds) if trained else {}
    targets = _targets(manifest, latency, floor)
    text = _tables(manifest, latency, targets)
    print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n")
    if plot:
        plot.parent.mkdir(parents=True, exist_ok=True)
        _plot(manifest, latency, plot)
        curve = plot.with_name(f"{plot.stem}_label_efficiency{plot.suffix}")
        if plot_label_efficiency(manifest, curve):
            print(f"label efficiency: {curve}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(
            json.dumps(
                {
                    "latency_p50_ms": latency,
                    "http_floor_p50_ms": {f: {"echo": e, "full_fp32": m} for f, (e, m) in floor.items()},
                    "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in targets],
                },
                indent=2,
            )
        )
    return 0
