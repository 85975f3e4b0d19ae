"""`flexserve profile`: measure every variant's service time on this machine, into the manifest.

For each family and batch size (1, 4, 16, 64 model rows, plus one whole typical request for
the recommender: 1,682 rows), every variant runs the same input round-robin, so a noisy
neighbour slows all of them alike. After warm-up, runs continue until each variant has at
least `min_runs` samples and the batch size has had its time slice (or `max_runs`). p50, p95
and p99 go into the manifest as each variant's `latency_ms` (keyed by batch size, in model
rows), and the hardware and ONNX Runtime settings they were taken with as `latency_profile`.
Serving builds its sessions from those same settings, so the profile describes what serving
runs; the routing policy then corrects it online with the latencies it observes.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.layout import new_version, version_of
from contract.manifest import FamilySection, Manifest, read_manifest, write_manifest
from contract.sessions import open_session, providers_for
from loadtest.payloads import adapter
from serving.repository import Repository, load_repository
from training.progress import Progress
from training.repository import register_in_bentoml

BATCH_SIZES = (1, 4, 16, 64)
DEVICES = ("cpu", "cuda")  # profiles are taken on one device explicitly, never "auto"


@dataclass(frozen=True)
class ProfileSettings:
    device: str = "cpu"
    # Intra-op threads per request: serving runs one request per core, one thread each.
    threads: int = 1
    warmup_runs: int = 5
    # 30 runs put the p95 between the 2nd and 3rd slowest sample; more when time allows.
    min_runs: int = 30
    max_runs: int = 400
    # Time slice per batch size and variant (seconds), after which min_runs is enough.
    seconds_per_point: float = 0.25

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads < 1 or self.min_runs < 1 or self.max_runs < self.min_runs:
            raise ValueError("threads and min_runs must be >= 1 and max_runs >= min_runs")


def batch_sizes_for(section: FamilySection) -> list[int]:
    rows = section.rows_per_request
    return sorted(set(BATCH_SIZES) | ({rows} if rows > 1 else set()))


def _stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(p50), 4),
        "p95": round(float(p95), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(a.mean()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "runs": len(samples),
    }


def hardware(device: str) -> dict:
    info = {
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    try:
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown"
    return info


def profile_family(
    repo: Repository,
    family: str,
    settings: ProfileSettings,
    rng: np.random.Generator,
    progress: Progress,
) -> dict[str, dict[str, dict]]:
    """{variant: {"<batch>": stats}} for one family, variants timed round-robin."""
    section, typical = repo.family(family), adapter(repo, family)
    providers = providers_for(settings.device)
    sessions = {
        v.name: open_session(repo.root / v.onnx, threads=settings.threads, providers=providers)
        for v in section.variants
    }
    result: dict[str, dict[str, dict]] = {name: {} for name in sessions}
    for batch in batch_sizes_for(section):
        feed = typical.typical_feeds(batch, rng)
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        for sess in sessions.values():
            for _ in range(settings.warmup_runs):
                sess.run(None, feed)
        started = time.perf_counter()
        deadline = started + settings.seconds_per_point * len(sessions)
        runs = 0
        while runs < settings.max_runs and (runs < settings.min_runs or time.perf_counter() < deadline):
            for name, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, feed)
                samples[name].append((time.perf_counter() - t0) * 1e3)
            runs += 1
        for name, values in samples.items():
            result[name][str(batch)] = _stats(values)
        fastest = min(result.values(), key=lambda r: r[str(batch)]["p50"])[str(batch)]["p50"]
        progress.log(
            f"[profile] {family} batch {batch:>5}: {len(sessions)} variants x {runs} runs in "
            f"{time.perf_counter() - started:.1f} s (fastest p50 {fastest:.3f} ms)"
        )
        progress.update(1, note=f"{family} batch {batch}")
    return result


def profile(
    repo: Path,
    settings: ProfileSettings = ProfileSettings(),
    families: list[str] | None = None,
    missing_only: bool = False,
    register: bool = False,
) -> Manifest:
    """Profile the live version's variants and write their `latency_ms` into a new version of the
    repository (profiles of variants that changed meanwhile are not written); returns its manifest."""
    repository = load_repository(repo, verify=False)
    manifest = repository.manifest
    unknown = sorted(set(families or []) - set(manifest.families))
    if unknown:
        raise ValueError(f"family {', '.join(unknown)} is not in {repo}: it holds {', '.join(manifest.families)}")
    providers = providers_for(settings.device)  # cuda without its execution provider: an error saying how to get it
    families = list(families or manifest.families)
    if missing_only:  # only families with a variant that has no profile yet (e.g. just retrained)
        families = [f for f in families if any(not v.latency_ms for v in manifest.families[f].variants)]
    started = time.perf_counter()
    total = sum(len(batch_sizes_for(manifest.families[f])) for f in families)
    with Progress(total, "profile", unit="point") as progress:
        if not families:
            progress.log(f"[profile] every variant in {repo} has a latency profile; nothing to do")
            return manifest
        rng = np.random.default_rng(0)
        for family in families:
            measured = profile_family(repository, family, settings, rng, progress)
            section = manifest.families[family]
            variants = tuple(replace(v, latency_ms=measured[v.name]) for v in section.variants)
            manifest = manifest.with_family(family, replace(section, variants=variants))
        profiled = {(f, v.name, v.sha256): v.latency_ms for f in families for v in manifest.families[f].variants}
        with new_version(repo) as stage:
            manifest = _with_profiles(read_manifest(stage), profiled)
            manifest = write_manifest(
                stage,
                replace(
                    manifest,
                    latency_profile={
                        "taken_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "hardware": hardware(settings.device),
                        "settings": {
                            **asdict(settings),
                            "provider": providers[0],
                            "inter_op_threads": 1,
                            "onnxruntime": ort.__version__,
                        },
                        "batch_size_unit": "model rows (the recommender's typical request is rows_per_request rows)",
                    },
                ),
            )
        if register:  # a new version in the BentoML model store, so FLEXSERVE_MODEL_TAG serves the profiles
            tag = register_in_bentoml(repo, manifest)
            progress.log(f"[profile] registered the profiled repository as {tag}")
        count = sum(len(manifest.families[f].variants) for f in families)
        progress.log(
            f"[profile] wrote latency_ms for {count} variants into version {version_of(repo)} of {repo} "
            f"in {time.perf_counter() - started:.0f} s"
        )
    return manifest


def _with_profiles(manifest: Manifest, profiled: dict[tuple[str, str, str], dict]) -> Manifest:
    """`manifest` with the measured profiles of the variants that are still the ones measured (same
    family, name and sha256): a variant retrained while it was being profiled keeps no stale profile."""
    for family, section in manifest.families.items():
        variants = tuple(
            replace(v, latency_ms=profiled.get((family, v.name, v.sha256), v.latency_ms)) for v in section.variants
        )
        manifest = manifest.with_family(family, replace(section, variants=variants))
    return manifest
