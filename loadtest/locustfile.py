"""Locust load test of the FlexServe gateway, with latency SLA checks.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000                    # web UI
    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --headless -u 8 -r 4 -t 60s \\
        --sla "interactive=20:0.3,standard=50:0.5,batch=200:0.2" --sla-percentile 95

Users: `ImageUser`, `TextUser`, `RecommendUser` (pick some by naming them on the command line),
sending real payloads from the test splits (Fashion-MNIST images, Rotten Tomatoes snippets,
MovieLens users) with each request's `latency_budget_ms` drawn from the SLA classes by weight.
Requests are named `<family>:<class>` in Locust's statistics. The chosen users' payloads are
read when Locust starts, before the run's clock (`-t`) does.

When the run ends (on the master in distributed mode; workers send their budget_met counts),
every SLA class is checked across families: the chosen percentile of the client-measured
response time within the class's budget, the failure ratio under `--max-failure-ratio`, and
the share of answers with `budget_met: true` over `--min-budget-met`. A broken SLA is printed
with how far off it is. The exit code is always set here, never left to Locust's
`--exit-code-on-error` (which would fail a run for any failed request): 0 when every class
passes, failed requests within `--max-failure-ratio` included; 1 when any class breaks (or the
users' own code raised). `--routing full|fastest` pins every request to the most accurate or
the fastest variant (for the adaptive-versus-static benchmark).
"""

from __future__ import annotations

import functools
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import gevent
from locust import FastHttpUser, between, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsEntry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `locust -f` does not put the repo on the path

from loadtest.sla import (
    DEFAULT_CLASSES,
    DEFAULT_MAX_FAILURE_RATIO,
    DEFAULT_MIN_BUDGET_MET,
    DEFAULT_PERCENTILE,
    check,
    exit_code,
    load_spec,
)

budget_met_counts: Counter = (
    Counter()
)  # SLA class -> answers with budget_met true (this process, since the last report)
_totals: Counter = Counter()  # on the master (or a local run): all processes' counts
_pins: dict[str, str] = {}  # family -> pinned variant, for --routing full|fastest


@events.init_command_line_parser.add_listener
def _options(parser):
    group = parser.add_argument_group("FlexServe SLA")
    group.add_argument("--sla", default=DEFAULT_CLASSES, help="SLA classes NAME=BUDGET_MS[:WEIGHT],...")
    group.add_argument("--sla-file", default=None, help="SLA classes and thresholds as JSON (overrides --sla)")
    group.add_argument(
        "--sla-percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help="percentile of response time checked against each class's budget",
    )
    group.add_argument(
        "--max-failure-ratio",
        type=float,
        default=DEFAULT_MAX_FAILURE_RATIO,
        help="most failed requests / requests a class may have and pass",
    )
    group.add_argument(
        "--min-budget-met",
        type=float,
        default=DEFAULT_MIN_BUDGET_MET,
        help="least share of a class's answers with budget_met: true",
    )
    group.add_argument("--sla-report", default=None, help="write the SLA verdicts as JSON here")
    group.add_argument(
        "--routing",
        choices=["adaptive", "full", "fastest"],
        default="adaptive",
        help="adaptive (the policy), or pin every request to the most accurate / fastest variant",
    )
    group.add_argument(
        "--no-request-start",
        action="store_true",
        help="do not stamp X-Request-Start (then the gateway cannot count the time before it "
        "against the budget; use when the load generators' clocks are not in sync with the server's)",
    )


def sla_spec(environment):
    """The run's SLA classes and thresholds, from its command line (or --sla-file)."""
    o = environment.parsed_options
    return load_spec(
        Path(o.sla_file) if o.sla_file else None, o.sla, o.sla_percentile, o.max_failure_ratio, o.min_budget_met
    )


@events.test_start.add_listener
def _on_start(environment, **_):
    sla_spec(environment)  # a malformed SLA fails the run at once, not at the end
    if environment.parsed_options.routing != "adaptive" and not isinstance(environment.runner, MasterRunner):
        import urllib.request

        with urllib.request.urlopen(f"{environment.host}/v1/variants", timeout=10) as response:
            families = json.loads(response.read())["families"]
        for family, info in families.items():
            _pins[family] = info["most_accurate" if environment.parsed_options.routing == "full" else "fastest"]


@events.init.add_listener
def _read_payloads(environment, **_):
    """Read the chosen users' payloads before the run and its clock start, not in its first seconds
    (a second or more per process, on a busy machine all of a short run)."""
    if isinstance(environment.runner, MasterRunner):
        return
    for user_class in environment.user_classes:
        if samples := getattr(user_class, "samples", None):
            samples()
    gevent.get_hub().loop.update_now()  # else the run-time clock starts from the loop's time before the reading


@events.report_to_master.add_listener
def _report(client_id, data):
    data["flexserve_budget_met"] = dict(budget_met_counts)
    budget_met_counts.clear()


@events.worker_report.add_listener
def _collect(client_id, data):
    _totals.update(data.get("flexserve_budget_met", {}))


@events.quitting.add_listener
def _verdict(environment, **_):
    if isinstance(environment.runner, WorkerRunner):
        return
    environment.process_exit_code = 1  # until the verdict says otherwise (should anything below raise)
    _totals.update(budget_met_counts)
    spec = sla_spec(environment)
    results = []
    for cls in spec.classes:
        merged = StatsEntry(environment.stats, cls.name, "POST")
        for (name, _method), entry in environment.stats.entries.items():
            if name.endswith(f":{cls.name}"):
                merged.extend(entry)
        percentile = merged.get_response_time_percentile(spec.percentile / 100) if merged.num_requests else 0.0
        results.append(
            check(spec, cls.name, merged.num_requests, merged.num_failures, float(percentile or 0.0), _totals[cls.name])
        )
    print(
        f"\nFlexServe SLA check (p{spec.percentile:g} within budget, failures <= {spec.max_failure_ratio:.1%}, "
        f"budget_met >= {spec.min_budget_met:.0%}):"
    )
    for r in results:
        state = "PASS" if r.ok else "FAIL"
        print(
            f"  {state} {r.name:<12} budget {r.budget_ms:g} ms: {r.requests} requests, p{spec.percentile:g} "
            f"{r.percentile_ms:.1f} ms, {r.failures} failed, {r.budget_met} budget_met"
        )
        for problem in r.problems:
            print(f"       SLA broken: {problem}")
    if environment.parsed_options.sla_report:
        # The final numbers (Locust's CSV can miss the last seconds of a run).
        by_name = [
            {
                "name": e.name,
                "requests": e.num_requests,
                "failures": e.num_failures,
                "median_ms": e.median_response_time,
                "p95_ms": e.get_response_time_percentile(0.95),
                "p99_ms": e.get_response_time_percentile(0.99),
                "rps": round(e.total_rps, 2),
            }
            for e in sorted(environment.stats.entries.values(), key=lambda e: e.name)
        ]
        Path(environment.parsed_options.sla_report).write_text(
            json.dumps(
                {
                    "percentile": spec.percentile,
                    "classes": [
                        {
                            "class": r.name,
                            "budget_ms": r.budget_ms,
                            "requests": r.requests,
                            "failures": r.failures,
                            "percentile_ms": r.percentile_ms,
                            "budget_met": r.budget_met,
                            "ok": r.ok,
                            "problems": r.problems,
                        }
                        for r in results
                    ],
                    "requests": by_name,
                },
                indent=1,
            )
        )
    user_errors = sum(e["count"] for e in environment.runner.exceptions.values()) if environment.runner else 0
    if user_errors:
        print(f"  FAIL the users' own code raised {user_errors} time(s) (see Locust's exception report)")
    # Always explicit: left unset, Locust exits --exit-code-on-error (1) on any failed request at all.
    environment.process_exit_code = exit_code(results, user_errors)


@functools.cache
def sample_images() -> list:
    from training.data import load_fashion_mnist

    return load_fashion_mnist().test.inputs["IMAGES"][:512, 0].astype(float).tolist()


@functools.cache
def sample_texts() -> list[str]:
    from training.data import rotten_tomatoes_test_texts

    return rotten_tomatoes_test_texts()


@functools.cache
def sample_users() -> list[int]:
    from training.data import load_movielens_100k

    data = load_movielens_100k()
    catalog = data.preprocessing["catalog"]
    rows = sorted(set(data.test.inputs["USER_FEATURES"][:, 0].tolist()))
    return [int(catalog["users"][r]["user_id"]) for r in rows]


class _FlexServeUser(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.01)
    family = ""
    path = ""

    def on_start(self):
        self.sla = sla_spec(self.environment)

    def payload(self) -> dict:
        raise NotImplementedError

    def call(self) -> None:
        cls = random.choices(self.sla.classes, weights=[c.weight for c in self.sla.classes])[0]
        body = {**self.payload(), "latency_budget_ms": cls.budget_ms}
        if self.family in _pins:
            body["variant"] = _pins[self.family]
        headers = (
            None if self.environment.parsed_options.no_request_start else {"X-Request-Start": f"t={time.time():.6f}"}
        )
        with self.client.post(
            self.path, json=body, headers=headers, name=f"{self.family}:{cls.name}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                answer = response.json()
            except (TypeError, ValueError):
                response.failure(f"HTTP 200 without a JSON body: {response.text[:200]}")
                return
            if answer.get("budget_met"):
                budget_met_counts[cls.name] += 1
            response.success()


class ImageUser(_FlexServeUser):
    family, path = "cnn", "/v1/classify_image"
    samples = staticmethod(sample_images)

    def payload(self) -> dict:
        return {"images": [random.choice(self.samples())]}

    @task
    def classify_image(self):
        self.call()


class TextUser(_FlexServeUser):
    family, path = "rnn", "/v1/classify_text"
    samples = staticmethod(sample_texts)

    def payload(self) -> dict:
        return {"texts": [random.choice(self.samples())]}

    @task
    def classify_text(self):
        self.call()


class RecommendUser(_FlexServeUser):
    family, path = "recsys", "/v1/recommend"
    samples = staticmethod(sample_users)

    def payload(self) -> dict:
        return {"user_id": random.choice(self.samples()), "k": 10}

    @task
    def recommend(self):
        self.call()
