"""The soak's own judgement: outage answers, fault windows, classification, double charges.

Which failed requests are outage answers, which fall inside a fault window, how GraphQL answers
are classified, what counts as a double charge, and when each sign of life came back.
"""

import httpx

from tests.support.soak.books import successes_per_original
from tests.support.soak.faults import resume_after
from tests.support.soak.load import classify
from tests.support.soak.report import (
    GRACE_SECONDS,
    ExitRecord,
    FaultRecord,
    MonitorSample,
    Sample,
    SoakConfig,
    SoakReport,
)


def _report(*faults: FaultRecord) -> SoakReport:
    report = SoakReport(SoakConfig(minutes=1, faults=()))
    report.faults = list(faults)
    return report


def _sample(code: str, status: int | None, *, at: float = 10.0, api: int = 0) -> Sample:
    return Sample("viewer", api, at, at + 0.1, status, code, retry_after=False)


def test_outage_answers() -> None:
    report = _report(
        FaultRecord("postgres_restart", "postgres", 5.0, 15.0),
        FaultRecord("api_restart", "api1", 40.0, 50.0),
    )
    unavailable = _sample("SERVICE_UNAVAILABLE", 503)
    assert not report.outage_answer(unavailable)  # a 503 must say when to come back
    unavailable.retry_after = True
    assert report.outage_answer(unavailable)
    assert not report.outage_answer(_sample("INTERNAL_SERVER_ERROR", 500))
    assert not report.outage_answer(_sample("INTERNAL_SERVER_ERROR", 200))
    assert report.outage_answer(_sample("CONNECTION_REFUSED", None))
    # A connection closed unanswered: only from the API process being restarted.
    assert not report.outage_answer(_sample("ReadError", None))
    assert report.outage_answer(_sample("ReadError", None, at=45.0, api=0))
    assert not report.outage_answer(_sample("ReadError", None, at=45.0, api=1))


def test_windows_include_the_grace_period_and_only_api_faults() -> None:
    report = _report(
        FaultRecord("redis_restart", "redis", 5.0, 15.0),
        FaultRecord("worker_kill", "worker1", 30.0, 32.0),
    )
    assert report.inside(_sample("OK", 200, at=15.0 + GRACE_SECONDS - 0.5))
    assert not report.inside(_sample("OK", 200, at=15.0 + GRACE_SECONDS + 0.5))
    # A killed worker is not an excuse for an API error.
    assert not report.inside(_sample("INTERNAL_SERVER_ERROR", 500, at=31.0))
    report.samples = [_sample("INTERNAL_SERVER_ERROR", 500, at=31.0), _sample("OK", 200)]
    assert dict(report.errors(inside=False)) == {"500 INTERNAL_SERVER_ERROR": 1}
    assert dict(report.errors(inside=True)) == {}


def test_each_error_outside_the_windows_is_listed_with_the_nearest_fault() -> None:
    report = _report(
        FaultRecord("redis_restart", "redis", 5.0, 15.0),
        FaultRecord("worker_kill", "worker1", 30.0, 32.0),
    )
    report.samples = [_sample("OK", 200, at=1.0), _sample("ReadError", None, at=33.0, api=1)]
    report.load_seconds = 40.0
    assert (
        "  outside: t=32.0-32.1 s api2 viewer: - ReadError; "
        "nearest fault worker_kill (worker1) t=29.0-31.0 s"
    ) in report.format().splitlines()


def _answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_classify() -> None:
    assert classify(_answer(200, {"data": {"viewer": {"role": "SUPPORT"}}}))[0] == "OK"
    masked = {
        "data": None,
        "errors": [{"message": "x", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}],
    }
    assert classify(_answer(500, masked))[0] == "INTERNAL_SERVER_ERROR"
    assert classify(_answer(200, {"errors": [{"message": "x"}]}))[0] == "UNCODED"
    assert classify(_answer(502, {"no": "graphql"}))[0] == "UNCODED"
    assert classify(httpx.Response(502, text="Bad gateway"))[0] == "NON_JSON"
    conflict = {
        "data": {
            "updateRetryPolicy": {"retryPolicy": None, "errors": [{"code": "VERSION_CONFLICT"}]}
        }
    }
    assert classify(_answer(200, conflict))[0] == "VERSION_CONFLICT"


def test_two_successful_retries_of_one_charge_are_a_double_charge() -> None:
    retries = [
        {"id": "r1", "retry_of": "ch_1", "outcome": "failed"},
        {"id": "r2", "retry_of": "r1", "outcome": "succeeded"},
        {"id": "r3", "retry_of": "ch_1", "outcome": "succeeded"},
        {"id": "r4", "retry_of": "ch_2", "outcome": "succeeded"},
    ]
    assert successes_per_original(retries) == {"ch_1": 2, "ch_2": 1}


def _seen(
    at: float,
    transitions: int | None,
    beats: dict[str, str] | None,
    ready: int | None = 200,
    worker: str | None = None,
) -> MonitorSample:
    body = None if worker is None else {"status": "ok", "worker": worker}
    return MonitorSample(at, transitions, beats, [ready], [body])


def test_resume_after_an_outage_is_the_first_sign_of_life_after_its_end() -> None:
    fault = FaultRecord("redis_restart", "redis", 10.0, 14.0)
    samples = [
        _seen(9.0, 100, {"hb|w1": "9.0", "hb|w2": "9.0"}, worker="ok"),
        _seen(12.0, 100, None, ready=503, worker="unknown"),
        _seen(15.0, 100, {"hb|w1": "9.0"}, ready=503, worker="stale"),
        _seen(16.0, 101, {"hb|w1": "9.0"}, worker="stale"),
        _seen(18.0, 104, {"hb|w1": "17.5"}, worker="ok"),
    ]
    resume = resume_after(samples, fault)
    assert (resume.processing, resume.ready, resume.heartbeat) == (2.0, 2.0, 4.0)
    assert (resume.worker_ready, resume.worker_seen, resume.heartbeat_seen) == (4.0, True, True)


def test_a_restarted_worker_is_back_when_its_own_heartbeat_appears() -> None:
    fault = FaultRecord("worker_kill", "worker1", 10.0, 11.0)
    samples = [
        _seen(9.0, 100, {"hb|old": "9.0", "hb|other": "9.0"}),
        # The other worker beating again is not the restarted one.
        _seen(12.0, 101, {"hb|old": "9.0", "hb|other": "12.0"}),
        _seen(14.0, 102, {"hb|old": "9.0", "hb|other": "14.0", "hb|new": "14.0"}),
    ]
    resume = resume_after(samples, fault)
    assert (resume.processing, resume.heartbeat) == (1.0, 3.0)
    assert resume.worker_seen is False


def test_no_heartbeat_at_all_is_reported_as_such() -> None:
    fault = FaultRecord("postgres_restart", "postgres", 10.0, 14.0)
    resume = resume_after([_seen(9.0, 5, {}), _seen(15.0, 5, {})], fault)
    assert (resume.processing, resume.heartbeat, resume.heartbeat_seen) == (None, None, False)


def test_an_exit_names_the_last_exception_of_its_log() -> None:
    tail = "\n".join(
        [
            '{"event": "starting"}',
            "│ ❱  298 │   │   │   raise ConnectionError(self._error_message(e))             │",
            "╰──────────────────────────────────────────────────────────────╯",
            "ConnectionError: Error 111 connecting to 127.0.0.1:40075. Connect call failed ",
            "('127.0.0.1', 40075).",
        ]
    )
    cause = ExitRecord("worker1", 1, 0.0, tail).cause
    assert cause == (
        "ConnectionError: Error 111 connecting to 127.0.0.1:40075. Connect call failed "
        "('127.0.0.1', 40075)."
    )
    assert ExitRecord("api1", 1, 0.0, "").cause == "no output"
