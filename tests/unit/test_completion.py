"""The gateway's Completion: the edge calls it once the response has left; the policy learns once."""

import time

from serving.gateway import Completion, RequestContext


class RecordingPolicy:
    def __init__(self):
        self.observed = []

    def observe_latency(self, decision, latency_ms):
        self.observed.append((decision, latency_ms))


def test_a_completion_reports_the_time_since_arrival_once():
    policy = RecordingPolicy()
    arrived = time.perf_counter() - 0.05  # the request reached the server 50 ms ago
    done = Completion(policy, "decision", arrived)
    done()
    done()  # a second call (or none at all) is harmless
    assert len(policy.observed) == 1
    decision, latency_ms = policy.observed[0]
    assert decision == "decision" and 50 <= latency_ms < 5_000


def test_a_request_context_without_a_budget_leaves_it_to_the_gateway_default():
    context = RequestContext()
    assert context.latency_budget_ms is None and context.budget_field == "latency_budget_ms"
    assert context.elapsed_ms == 0.0 and context.arrived_at is None and context.strict is False
