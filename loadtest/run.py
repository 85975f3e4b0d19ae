"""`flexserve loadtest`: a headless Locust run with the SLA checks, plus its reports.

Writes Locust's CSV files (`<out>/locust_*.csv`) and HTML report (`<out>/locust.html`), the SLA
verdicts (`<out>/sla.json`) and a Markdown summary (`<out>/summary.md`). Returns Locust's exit
code, which the locustfile sets from the SLA verdicts: 0 when every class passed (failed
requests within the allowed ratio included), 1 when one broke.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.sla import DEFAULT_MAX_FAILURE_RATIO, DEFAULT_MIN_BUDGET_MET, DEFAULT_PERCENTILE

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
LOCUST = str(Path(sys.executable).parent / "locust")


def command(
    host: str,
    users: int,
    spawn_rate: float,
    duration: str,
    out: Path,
    sla: str | None,
    sla_file: Path | None,
    routing: str,
    user_classes: list[str],
    extra: list[str],
    percentile: float = DEFAULT_PERCENTILE,
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO,
    min_budget_met: float = DEFAULT_MIN_BUDGET_MET,
) -> list[str]:
    """Locust's command line. The thresholds fill in what an SLA file leaves out (its own win)."""
    cmd = [
        LOCUST,
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        duration,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--sla-report",
        str(out / "sla.json"),
        "--routing",
        routing,
        "--sla-percentile",
        str(percentile),
        "--max-failure-ratio",
        str(max_failure_ratio),
        "--min-budget-met",
        str(min_budget_met),
    ]
    if sla_file:
        cmd += ["--sla-file", str(sla_file)]
    elif sla:
        cmd += ["--sla", sla]
    return cmd + extra + user_classes


def summary(out: Path) -> str:
    report = json.loads((out / "sla.json").read_text()) if (out / "sla.json").exists() else {}
    p = f"p{report.get('percentile', 95):g}"
    lines = [
        f"| SLA class | budget | requests | failures | {p} | budget_met | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for v in report.get("classes", []):
        verdict = "PASS" if v["ok"] else "FAIL: " + "; ".join(v["problems"])
        lines.append(
            f"| {v['class']} | {v['budget_ms']:g} ms | {v['requests']} | {v['failures']} | "
            f"{v['percentile_ms']:.1f} ms | {v['budget_met']} | {verdict} |"
        )
    lines += [
        "",
        "| request | count | failures | median (ms) | p95 (ms) | p99 (ms) | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.get("requests", []):
        lines.append(
            f"| {r['name']} | {r['requests']} | {r['failures']} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['rps']:.1f} |"
        )
    return "\n".join(lines)


def run(
    host: str,
    users: int = 8,
    spawn_rate: float = 4,
    duration: str = "60s",
    out: Path = Path("reports/loadtest"),
    sla: str | None = None,
    sla_file: Path | None = None,
    routing: str = "adaptive",
    user_classes: list[str] | None = None,
    extra: list[str] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO,
    min_budget_met: float = DEFAULT_MIN_BUDGET_MET,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sla.json").unlink(missing_ok=True)
    cmd = command(
        host,
        users,
        spawn_rate,
        duration,
        out,
        sla,
        sla_file,
        routing,
        user_classes or [],
        extra or [],
        percentile,
        max_failure_ratio,
        min_budget_met,
    )
    print("[loadtest] " + " ".join(cmd), file=sys.stderr, flush=True)
    code = subprocess.run(cmd).returncode
    text = summary(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    print(
        f"[loadtest] reports in {out}/ (locust.html, locust_*.csv, sla.json, summary.md); exit code {code}",
        file=sys.stderr,
    )
    return code
