"""The request headers the edge parses: X-Latency-Budget-Ms and X-Request-Start."""

import pytest

from serving.errors import InvalidRequestError
from serving.headers import MAX_REQUEST_AGE_MS, budget_from_header, elapsed_since_request_start

NOW = 1_700_000_000.0  # Unix seconds


def test_a_budget_header_is_parsed():
    assert budget_from_header(None) is None
    assert budget_from_header("20") == 20.0 and budget_from_header(" 2.5 ") == 2.5


@pytest.mark.parametrize("value", ["inf", "-3", "0", "60001"])
def test_a_budget_header_out_of_range_names_the_header(value):  # as /docs.json says: (0, 60000]
    with pytest.raises(InvalidRequestError) as error:
        budget_from_header(value)
    assert error.value.field == "X-Latency-Budget-Ms" and "60000" in error.value.accepted


@pytest.mark.parametrize("value", ["soon", "", "20ms"])
def test_a_budget_header_that_is_not_a_number_names_the_header(value):
    with pytest.raises(InvalidRequestError) as error:
        budget_from_header(value)
    assert error.value.field == "X-Latency-Budget-Ms" and "milliseconds" in error.value.accepted


@pytest.mark.parametrize(
    "stamp, elapsed_ms",
    [
        (f"t={NOW - 0.25}", 250.0),  # seconds, nginx's t=${msec} style
        (f"{NOW - 0.25}", 250.0),  # without the t=
        (f"t={int((NOW - 0.04) * 1e3)}", 40.0),  # milliseconds
        (f"t={int((NOW - 0.004) * 1e6)}", 4.0),  # microseconds
    ],
)
def test_request_start_in_seconds_milliseconds_or_microseconds(stamp, elapsed_ms):
    assert elapsed_since_request_start(stamp, NOW) == pytest.approx(elapsed_ms, abs=0.01)


def test_no_stamp_is_no_time_and_a_stamp_from_the_future_counts_as_none():
    assert elapsed_since_request_start(None, NOW) == 0.0
    assert elapsed_since_request_start(f"t={NOW + 3}", NOW) == 0.0  # clock skew, not negative time


@pytest.mark.parametrize(
    "stamp, problem",
    [
        ("yesterday", "is not a time"),
        ("t=nan", "is not a time"),
        ("t=-5", "is not a time"),
        ("t=", "is not a time"),
        (f"t={NOW - 61}", "61 s ago"),
    ],
)
def test_a_bad_or_stale_request_start_names_the_header_and_what_is_accepted(stamp, problem):
    with pytest.raises(InvalidRequestError) as error:
        elapsed_since_request_start(stamp, NOW)
    assert error.value.field == "X-Request-Start" and problem in error.value.problem
    assert "t=" in error.value.accepted or "client's clock" in error.value.accepted


def test_the_oldest_stamp_accepted_is_a_minute():
    assert elapsed_since_request_start(f"t={NOW - MAX_REQUEST_AGE_MS / 1e3 + 0.5}", NOW) < MAX_REQUEST_AGE_MS
