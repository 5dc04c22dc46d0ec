"""The shared circuit breaker: its three states, forced states, accounting and transition log."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.breaker import CLOSED, HALF_OPEN, OPEN, BreakerTransition, CircuitBreaker, CircuitOpenError
from esper_core.errors import EsperError
from esper_core.leyline import CircuitBreakerState
from esper_core.testing.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kwargs) -> CircuitBreaker:
    kwargs.setdefault("failure_threshold", 3)
    kwargs.setdefault("open_timeout_s", 10.0)
    return CircuitBreaker("urza", clock=clock, **kwargs)


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    assert breaker.state == OPEN


def test_states_are_the_leyline_enum():
    assert CLOSED == CircuitBreakerState.CIRCUIT_STATE_CLOSED
    assert OPEN == CircuitBreakerState.CIRCUIT_STATE_OPEN
    assert HALF_OPEN == CircuitBreakerState.CIRCUIT_STATE_HALF_OPEN
    assert len({CLOSED, OPEN, HALF_OPEN}) == 3


def test_starts_closed_and_allows(clock):
    breaker = make(clock)
    assert breaker.state == CLOSED
    assert not breaker.is_open
    assert breaker.allow()


def test_opens_after_threshold_consecutive_failures(clock):
    breaker = make(clock, failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == CLOSED
    assert breaker.snapshot().consecutive_failures == 2
    breaker.record_failure("timeout")
    assert breaker.state == OPEN
    assert breaker.is_open
    assert not breaker.allow()


def test_threshold_of_one_opens_on_first_failure(clock):
    breaker = make(clock, failure_threshold=1)
    breaker.record_failure()
    assert breaker.state == OPEN


def test_success_while_closed_resets_the_count(clock):
    breaker = make(clock, failure_threshold=3)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
        assert breaker.state == CLOSED
        assert breaker.snapshot().consecutive_failures == 0
    assert breaker.snapshot().failures_total == 10


def test_open_denies_until_the_timeout_then_half_opens(clock):
    breaker = make(clock, open_timeout_s=10.0)
    open_breaker(breaker)
    for _ in range(4):
        assert not breaker.allow()
        clock.advance(2.0)
    clock.advance(1.99)  # 9.99 s after opening
    assert not breaker.allow()
    assert breaker.snapshot().denied_total == 5
    clock.advance(0.01)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN
    assert breaker.snapshot().denied_total == 5


def test_state_stays_open_until_someone_asks(clock):
    """The timeout is checked lazily by allow(); reading the state does not move it."""
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(100.0)
    assert breaker.state == OPEN
    assert breaker.allow()
    assert breaker.state == HALF_OPEN


def test_zero_timeout_half_opens_immediately(clock):
    breaker = make(clock, open_timeout_s=0.0)
    open_breaker(breaker)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN


def test_success_threshold_successes_close_it(clock):
    breaker = make(clock, success_threshold=3)
    open_breaker(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert breaker.state == HALF_OPEN
    assert breaker.snapshot().half_open_successes == 2
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED
    assert breaker.snapshot().half_open_successes == 0
    assert breaker.snapshot().consecutive_failures == 0


def test_after_closing_it_takes_the_full_threshold_to_reopen(clock):
    breaker = make(clock, failure_threshold=3)
    open_breaker(breaker)
    clock.advance(10.0)
    breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_failure_in_half_open_reopens(clock):
    breaker = make(clock, success_threshold=2)
    open_breaker(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_success()
    breaker.record_failure("probe timed out")
    assert breaker.state == OPEN
    assert breaker.snapshot().opens_total == 2
    assert not breaker.allow(), "the open window restarts when a probe fails"
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.snapshot().half_open_successes == 0, "successes before the failed probe do not count"


def test_failure_while_open_extends_the_window(clock):
    breaker = make(clock, open_timeout_s=10.0)
    open_breaker(breaker)
    clock.advance(8.0)
    breaker.record_failure("still failing")
    assert breaker.state == OPEN
    clock.advance(8.0)  # 16 s after opening, 8 s after the last failure
    assert not breaker.allow()
    clock.advance(2.0)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN
    assert breaker.snapshot().opens_total == 1


def test_success_while_open_changes_nothing(clock):
    breaker = make(clock)
    open_breaker(breaker)
    breaker.record_success()
    assert breaker.state == OPEN
    assert not breaker.allow()


# --- forcing ---------------------------------------------------------------------------------------------------


def test_force_open_holds_past_the_timeout_and_ignores_outcomes(clock):
    breaker = make(clock, open_timeout_s=10.0)
    breaker.force(OPEN, "operator")
    assert breaker.state == OPEN
    clock.advance(1000.0)
    assert not breaker.allow()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == OPEN
    snapshot = breaker.snapshot()
    assert snapshot.failures_total == 1, "failures while forced are still counted"
    assert snapshot.denied_total == 1


def test_release_restarts_the_open_window(clock):
    breaker = make(clock, open_timeout_s=10.0)
    breaker.force(OPEN, "operator")
    clock.advance(1000.0)
    breaker.release()
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.advance(10.0)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN


def test_force_closed_ignores_failures_until_released(clock):
    breaker = make(clock, failure_threshold=2)
    open_breaker(breaker)
    breaker.force(CLOSED, "command")
    assert breaker.allow()
    for _ in range(10):
        breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.release()
    breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN


def test_force_half_open_pins_it(clock):
    breaker = make(clock, success_threshold=1)
    breaker.force(HALF_OPEN, "probe manually")
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == HALF_OPEN
    breaker.release()
    breaker.record_success()
    assert breaker.state == CLOSED


def test_forcing_the_current_state_records_no_transition(clock):
    breaker = make(clock)
    breaker.force(CLOSED, "no-op")
    assert breaker.drain_transitions() == []


# --- call() ----------------------------------------------------------------------------------------------------


def test_call_returns_the_result_and_records_success(clock):
    breaker = make(clock, failure_threshold=2)
    breaker.record_failure()
    assert breaker.call(lambda: 42) == 42
    assert breaker.snapshot().consecutive_failures == 0


def test_call_records_failure_and_reraises(clock):
    breaker = make(clock, failure_threshold=2)

    def boom() -> None:
        raise RuntimeError("kernel missing")

    with pytest.raises(RuntimeError, match="kernel missing"):
        breaker.call(boom)
    with pytest.raises(RuntimeError):
        breaker.call(boom)
    assert breaker.state == OPEN
    transitions = breaker.drain_transitions()
    assert "RuntimeError: kernel missing" in transitions[-1].reason


def test_call_when_open_raises_without_calling(clock):
    breaker = make(clock)
    open_breaker(breaker)
    called = []
    with pytest.raises(CircuitOpenError, match="urza") as excinfo:
        breaker.call(lambda: called.append(1))
    assert isinstance(excinfo.value, EsperError)
    assert called == []
    assert breaker.snapshot().denied_total == 1


def test_call_probes_when_half_open(clock):
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(10.0)
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == CLOSED


# --- transitions and snapshot ----------------------------------------------------------------------------------


def test_drain_transitions_in_order_and_empties(clock):
    breaker = make(clock, failure_threshold=2, success_threshold=1, open_timeout_s=5.0)
    breaker.record_failure()
    breaker.record_failure("disk full")
    clock.advance(5.0)
    breaker.allow()
    breaker.record_failure("again")
    clock.advance(5.0)
    breaker.allow()
    breaker.record_success()
    breaker.force(OPEN, "operator says so")

    transitions = breaker.drain_transitions()
    assert [(t.from_state, t.to_state) for t in transitions] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, OPEN),
    ]
    reasons = [t.reason for t in transitions]
    assert "2 consecutive failures" in reasons[0] and "disk full" in reasons[0]
    assert reasons[1] == "open timeout elapsed"
    assert "probe failed: again" in reasons[2]
    assert "probe" in reasons[4]
    assert reasons[5] == "forced: operator says so"
    assert all(isinstance(t, BreakerTransition) and t.breaker == "urza" for t in transitions)
    assert [t.at for t in transitions] == [1000.0, 1005.0, 1005.0, 1010.0, 1010.0, 1010.0]
    assert breaker.drain_transitions() == []


def test_snapshot_counts(clock):
    breaker = make(clock, failure_threshold=2, open_timeout_s=5.0)
    breaker.record_failure()
    breaker.record_failure()
    breaker.allow()
    breaker.allow()
    clock.advance(5.0)
    breaker.allow()
    breaker.record_failure()
    breaker.allow()
    snapshot = breaker.snapshot()
    assert snapshot.name == "urza"
    assert snapshot.state == OPEN
    assert snapshot.opens_total == 2
    assert snapshot.denied_total == 3
    assert snapshot.failures_total == 3
    assert snapshot.consecutive_failures == 0
    assert snapshot.half_open_successes == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"success_threshold": 0}, {"failure_threshold": -1}, {"open_timeout_s": -0.1}],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker("x", **kwargs)


# --- property --------------------------------------------------------------------------------------------------

_STATES = st.sampled_from([CLOSED, OPEN, HALF_OPEN])
_ADVANCE = st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 4.0, 6.0]) | st.floats(0.0, 8.0))
_OPS = st.one_of(
    st.sampled_from([("allow",), ("success",), ("call_ok",), ("call_fail",)]),
    st.just(("failure",)),  # failures and clock advances are drawn more often, to reach the open states
    st.just(("failure",)),
    _ADVANCE,
    _ADVANCE,
    st.tuples(st.just("force"), _STATES),
    st.just(("release",)),
    st.just(("release",)),
)
# Which unforced transitions each operation may cause.
_ALLOWED = {
    "allow": {(OPEN, HALF_OPEN)},
    "success": {(HALF_OPEN, CLOSED)},
    "failure": {(CLOSED, OPEN), (HALF_OPEN, OPEN)},
    "call_ok": {(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)},
    "call_fail": {(OPEN, HALF_OPEN), (CLOSED, OPEN), (HALF_OPEN, OPEN)},
    "advance": set(),
    "release": set(),
}


@settings(max_examples=300, deadline=None)
@given(
    failure_threshold=st.integers(1, 4),
    success_threshold=st.integers(1, 3),
    timeout=st.sampled_from([0.0, 1.0, 5.0]),
    ops=st.lists(_OPS, min_size=20, max_size=80),
)
def test_breaker_invariants(failure_threshold, success_threshold, timeout, ops):
    clock = FakeClock()
    breaker = CircuitBreaker(
        "p",
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        open_timeout_s=timeout,
        clock=clock,
    )
    forced = False
    denied = failures = opens = 0
    consecutive = 0  # the model's count of consecutive failures while CLOSED and unforced
    opened_at = 0.0  # when the current open window started
    for op in ops:
        before = breaker.state
        kind = op[0]
        if kind == "allow":
            allowed = breaker.allow()
            assert allowed == (breaker.state != OPEN)
            denied += not allowed
        elif kind == "success":
            breaker.record_success()
        elif kind == "failure":
            breaker.record_failure()
            failures += 1
        elif kind in ("call_ok", "call_fail"):

            def fn(fail: bool = kind == "call_fail") -> int:
                if fail:
                    raise ValueError("x")
                return 1

            try:
                breaker.call(fn)
            except CircuitOpenError:
                denied += 1
            except ValueError:
                failures += 1
        elif kind == "advance":
            clock.advance(op[1])
        elif kind == "force":
            breaker.force(op[1], "test")
            forced = True
        elif kind == "release":
            breaker.release()
            forced = False

        after = breaker.state
        assert after in (CLOSED, OPEN, HALF_OPEN)
        transitions = breaker.drain_transitions()
        state = before
        for t in transitions:
            assert t.from_state == state, "transitions chain from the previous state"
            assert t.from_state != t.to_state
            state = t.to_state
            if t.to_state == OPEN:
                opens += 1
            if kind == "force":
                assert t.reason.startswith("forced:")
                continue
            assert not forced, "a forced breaker changes state only through force()"
            assert (t.from_state, t.to_state) in _ALLOWED[kind], f"{kind} caused {t.from_state}->{t.to_state}"
            assert (t.from_state, t.to_state) != (CLOSED, HALF_OPEN)
            if t.to_state == OPEN:
                assert kind in ("failure", "call_fail")
        assert state == after
        assert len(transitions) <= 2

        # The open window: it starts when the breaker opens, a failure while open or a release restarts it, and
        # only asking after it has fully elapsed half-opens the breaker.
        if before == OPEN and not forced and kind in ("allow", "call_ok", "call_fail"):
            elapsed = clock.now - opened_at
            assert bool(transitions) == (elapsed >= timeout), f"{elapsed=} {timeout=}"
        if transitions and transitions[-1].to_state == OPEN:
            opened_at = transitions[-1].at
        elif after == OPEN and (kind == "release" or (kind == "failure" and not forced)):
            opened_at = clock.now

        # Failure counting while closed: the breaker opens exactly at the threshold, and only then.
        if kind == "force":
            if transitions:
                consecutive = 0
        elif forced or kind in ("allow", "advance", "release"):
            pass
        elif kind in ("success", "call_ok"):
            consecutive = 0
        elif before == CLOSED:  # a failure while closed
            consecutive += 1
            if consecutive >= failure_threshold:
                assert after == OPEN
                consecutive = 0
            else:
                assert after == CLOSED

        snapshot = breaker.snapshot()
        assert snapshot.state == after
        assert snapshot.denied_total == denied
        assert snapshot.failures_total == failures
        assert snapshot.opens_total == opens
        assert snapshot.consecutive_failures == (consecutive if after == CLOSED else 0)
        assert snapshot.consecutive_failures < failure_threshold
        if after == HALF_OPEN and not forced:
            assert snapshot.half_open_successes < success_threshold
