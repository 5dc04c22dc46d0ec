"""Signing, verification, replay and freshness checks of Leyline commands and policy updates."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.errors import SecurityError
from esper_core.leyline import AdaptationCommand, CommandType, PolicyUpdate, SecurityRejectionReason
from esper_core.signing import (
    MIN_SECRET_BYTES,
    SECRET_ENV_VAR,
    CommandSigner,
    CommandVerifier,
    NonceLedger,
    SigningKey,
    Verdict,
    _command_signed_bytes,
    sign_signature_field,
    verify_signature_field,
)
from esper_core.testing.clock import FakeClock

T0 = 1_700_000_000.0
SECRET = "a-test-secret-of-sufficient-length"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_secret(SECRET)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def make_command(slot: str = "encoder.layer1") -> AdaptationCommand:
    return AdaptationCommand(
        version=1,
        command_type=CommandType.COMMAND_SEED,
        target_slot_id=slot,
        issued_by="tamiyo",
        training_run_id="run-1",
        decision_epoch=3,
        decision_step=120,
        annotations={"why": "plateau"},
    )


def signed(key: SigningKey, clock: FakeClock, slot: str = "encoder.layer1") -> AdaptationCommand:
    return CommandSigner(key, clock=clock).sign(make_command(slot))


def resign(key: SigningKey, command: AdaptationCommand) -> AdaptationCommand:
    """Recompute a valid signature after the test altered a security field."""
    command.security.signature = key.sign(_command_signed_bytes(command))
    return command


def assert_refused(verdict: Verdict, reason: int) -> None:
    assert not verdict.accepted
    assert verdict.reason == reason, (
        f"expected {SecurityRejectionReason.Name(reason)}, got {verdict.reason_name}: {verdict.detail}"
    )
    assert verdict.reason_name == SecurityRejectionReason.Name(reason)
    assert verdict.detail, "every refusal must explain itself"


# --- round trip ------------------------------------------------------------------------------------------------


def test_signed_command_is_accepted(key, clock):
    verifier = CommandVerifier(key, clock=clock)
    verdict = verifier.verify(signed(key, clock))
    assert verdict.accepted
    assert verdict.reason == SecurityRejectionReason.SECURITY_REJECTION_UNSPECIFIED
    assert verifier.rejections == {}


def test_signer_fills_the_security_block(key, clock):
    command = CommandSigner(key, issuer="tamiyo-heuristic", freshness_window_ms=1234, clock=clock).sign(
        AdaptationCommand(command_type=CommandType.COMMAND_NOOP)
    )
    security = command.security
    assert command.command_id
    assert security.nonce == command.command_id
    assert security.issued_at.ToNanoseconds() == int(T0 * 1e9)
    assert security.freshness_window_ms == 1234
    assert security.key_id == key.key_id
    assert command.issued_by == "tamiyo-heuristic"
    assert len(security.signature) == 32  # HMAC-SHA256


def test_signer_keeps_an_explicit_issuer(key, clock):
    command = make_command()
    CommandSigner(key, issuer="someone-else", clock=clock).sign(command)
    assert command.issued_by == "tamiyo"


def test_resigning_gives_a_fresh_nonce(key, clock):
    """Signing the same command object twice must not produce two commands with the same nonce."""
    signer = CommandSigner(key, clock=clock)
    command = make_command()
    first_nonce = signer.sign(command).security.nonce
    second_nonce = signer.sign(command).security.nonce
    assert first_nonce != second_nonce
    assert CommandVerifier(key, clock=clock).verify(command).accepted


def test_command_survives_the_wire(key, clock):
    wire = signed(key, clock).SerializeToString()
    assert CommandVerifier(key, clock=clock).verify(AdaptationCommand.FromString(wire)).accepted


# --- each rejection reason -------------------------------------------------------------------------------------


def test_no_key_refuses_everything(key, clock):
    verifier = CommandVerifier(None, clock=clock)
    assert_refused(verifier.verify(signed(key, clock)), SecurityRejectionReason.SECURITY_REJECTION_VERIFIER_UNAVAILABLE)
    assert SecurityRejectionReason.SECURITY_REJECTION_VERIFIER_UNAVAILABLE == 1


def test_unsigned_command_is_refused(key, clock):
    assert_refused(
        CommandVerifier(key, clock=clock).verify(make_command()),
        SecurityRejectionReason.SECURITY_REJECTION_MISSING_SIGNATURE,
    )
    assert SecurityRejectionReason.SECURITY_REJECTION_MISSING_SIGNATURE == 2


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: setattr(c, "target_slot_id", "decoder.layer9"),
        lambda c: setattr(c, "command_type", CommandType.COMMAND_EMERGENCY),
        lambda c: c.annotations.__setitem__("why", "because"),
        lambda c: setattr(c.security, "nonce", "another-nonce"),
        lambda c: c.security.issued_at.FromNanoseconds(c.security.issued_at.ToNanoseconds() + 1),
        lambda c: setattr(c.security, "freshness_window_ms", 999_999),
        lambda c: setattr(c.security, "key_id", "forged"),
    ],
    ids=["slot", "type", "annotation", "nonce", "issued_at", "window", "key_id"],
)
def test_tampered_command_is_refused(key, clock, tamper):
    command = signed(key, clock)
    tamper(command)
    assert_refused(
        CommandVerifier(key, clock=clock).verify(command), SecurityRejectionReason.SECURITY_REJECTION_INVALID_SIGNATURE
    )
    assert SecurityRejectionReason.SECURITY_REJECTION_INVALID_SIGNATURE == 3


def test_command_signed_with_another_key_is_refused(key, clock):
    other = SigningKey.from_secret("a-different-secret-entirely")
    command = signed(other, clock)
    assert_refused(
        CommandVerifier(key, clock=clock).verify(command), SecurityRejectionReason.SECURITY_REJECTION_INVALID_SIGNATURE
    )
    assert CommandVerifier(other, clock=clock).verify(command).accepted


def test_truncated_signature_is_refused(key, clock):
    command = signed(key, clock)
    command.security.signature = command.security.signature[:16]
    assert_refused(
        CommandVerifier(key, clock=clock).verify(command), SecurityRejectionReason.SECURITY_REJECTION_INVALID_SIGNATURE
    )


def test_missing_nonce_is_refused(key, clock):
    command = signed(key, clock)
    command.security.nonce = ""
    resign(key, command)
    assert_refused(
        CommandVerifier(key, clock=clock).verify(command), SecurityRejectionReason.SECURITY_REJECTION_MISSING_NONCE
    )
    assert SecurityRejectionReason.SECURITY_REJECTION_MISSING_NONCE == 4


@pytest.mark.parametrize("how", ["cleared", "zero"])
def test_missing_timestamp_is_refused(key, clock, how):
    command = signed(key, clock)
    if how == "cleared":
        command.security.ClearField("issued_at")
    else:
        command.security.issued_at.FromNanoseconds(0)
    resign(key, command)
    assert_refused(
        CommandVerifier(key, clock=clock).verify(command), SecurityRejectionReason.SECURITY_REJECTION_MISSING_TIMESTAMP
    )
    assert SecurityRejectionReason.SECURITY_REJECTION_MISSING_TIMESTAMP == 6


def test_command_from_the_future_is_refused(key, clock):
    signer_clock = FakeClock(T0 + 5.1)
    verifier = CommandVerifier(key, max_future_skew_ms=5_000, clock=clock)
    assert_refused(
        verifier.verify(signed(key, signer_clock)), SecurityRejectionReason.SECURITY_REJECTION_ISSUED_IN_FUTURE
    )
    assert SecurityRejectionReason.SECURITY_REJECTION_ISSUED_IN_FUTURE == 7


def test_small_clock_skew_is_tolerated(key, clock):
    verifier = CommandVerifier(key, max_future_skew_ms=5_000, clock=clock)
    assert verifier.verify(signed(key, FakeClock(T0 + 4.9))).accepted


def test_stale_command_is_refused(key, clock):
    command = signed(key, clock)
    clock.advance(60.1)
    verifier = CommandVerifier(key, freshness_window_ms=60_000, clock=clock)
    assert_refused(verifier.verify(command), SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert SecurityRejectionReason.SECURITY_REJECTION_STALE == 8


def test_command_just_inside_the_window_is_accepted(key, clock):
    command = signed(key, clock)
    clock.advance(59.9)
    assert CommandVerifier(key, freshness_window_ms=60_000, clock=clock).verify(command).accepted


def test_command_stale_by_its_own_window_is_refused(key, clock):
    """A signer may ask for a shorter life: stale by the command's 5 s window, though fresh by the verifier's 60 s."""
    command = CommandSigner(key, freshness_window_ms=5_000, clock=clock).sign(make_command())
    verifier = CommandVerifier(key, freshness_window_ms=60_000, clock=clock)
    assert verifier.window_ms(command) == 5_000
    clock.advance(5.1)
    verdict = verifier.verify(command)
    assert_refused(verdict, SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert "5000 ms, the command's own" in verdict.detail
    assert command.security.nonce not in verifier.ledger


def test_command_inside_its_own_window_is_accepted(key, clock):
    command = CommandSigner(key, freshness_window_ms=5_000, clock=clock).sign(make_command())
    clock.advance(4.9)
    assert CommandVerifier(key, freshness_window_ms=60_000, clock=clock).verify(command).accepted


def test_command_window_larger_than_the_verifiers_does_not_extend_it(key, clock):
    """A command cannot outlive the receiver's window (its replay protection is sized for it) by asking to."""
    command = CommandSigner(key, freshness_window_ms=600_000, clock=clock).sign(make_command())
    verifier = CommandVerifier(key, freshness_window_ms=60_000, clock=clock)
    assert verifier.window_ms(command) == 60_000
    clock.advance(60.1)
    verdict = verifier.verify(command)
    assert_refused(verdict, SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert "60000 ms, the verifier's" in verdict.detail


@pytest.mark.parametrize("how", ["zero", "unset"])
def test_command_without_a_window_gets_the_verifiers(key, clock, how):
    def without_window() -> AdaptationCommand:
        command = signed(key, FakeClock(T0))
        if how == "zero":
            command.security.freshness_window_ms = 0
        else:
            command.security.ClearField("freshness_window_ms")
        return resign(key, command)

    verifier = CommandVerifier(key, freshness_window_ms=60_000, clock=clock)
    fresh, late = without_window(), without_window()
    assert verifier.window_ms(fresh) == 60_000
    clock.advance(59.9)
    assert verifier.verify(fresh).accepted
    clock.advance(0.2)
    verdict = verifier.verify(late)
    assert_refused(verdict, SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert "60000 ms, the verifier's" in verdict.detail


def test_replayed_command_is_refused(key, clock):
    verifier = CommandVerifier(key, clock=clock)
    command = signed(key, clock)
    assert verifier.verify(command).accepted
    clock.advance(1.0)
    assert_refused(verifier.verify(command), SecurityRejectionReason.SECURITY_REJECTION_NONCE_REPLAYED)
    assert SecurityRejectionReason.SECURITY_REJECTION_NONCE_REPLAYED == 5


def test_replay_with_a_recomputed_signature_is_refused(key, clock):
    """A key holder who alters a command but keeps its nonce cannot get it executed twice."""
    verifier = CommandVerifier(key, clock=clock)
    command = signed(key, clock)
    assert verifier.verify(command).accepted
    command.target_slot_id = "decoder.layer9"
    resign(key, command)
    assert_refused(verifier.verify(command), SecurityRejectionReason.SECURITY_REJECTION_NONCE_REPLAYED)


def test_rejections_are_counted_by_reason(key, clock):
    verifier = CommandVerifier(key, clock=clock)
    command = signed(key, clock)
    verifier.verify(command)
    verifier.verify(command)
    verifier.verify(command)
    verifier.verify(make_command())
    assert verifier.rejections == {"SECURITY_REJECTION_NONCE_REPLAYED": 2, "SECURITY_REJECTION_MISSING_SIGNATURE": 1}


# --- the bounded nonce ledger ----------------------------------------------------------------------------------


def test_full_ledger_never_lets_a_replay_through(key, clock):
    """Evicting a live nonce raises the horizon, so the evicted command is refused as stale rather than accepted."""
    verifier = CommandVerifier(key, nonce_capacity=2, clock=clock)
    commands = []
    for _ in range(3):
        commands.append(signed(key, clock))
        assert verifier.verify(commands[-1]).accepted
        clock.advance(1.0)
    assert len(verifier.ledger) == 2
    assert verifier.ledger.evictions == 1
    assert commands[0].security.nonce not in verifier.ledger

    assert_refused(verifier.verify(commands[0]), SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert "horizon" in verifier.verify(commands[0]).detail
    assert_refused(verifier.verify(commands[1]), SecurityRejectionReason.SECURITY_REJECTION_NONCE_REPLAYED)
    assert_refused(verifier.verify(commands[2]), SecurityRejectionReason.SECURITY_REJECTION_NONCE_REPLAYED)
    # A command issued after the horizon is still accepted.
    assert verifier.verify(signed(key, clock)).accepted


def test_horizon_never_moves_back_with_out_of_order_issue_times(key, clock):
    """Clock skew means nonces are not evicted in issue order; evicting an older one must not lower the horizon."""
    verifier = CommandVerifier(key, nonce_capacity=2, clock=clock)
    a, b, c, d = (signed(key, FakeClock(T0 + offset)) for offset in (4.0, 1.0, 4.5, 4.6))
    for command in (a, b, c, d):  # c evicts a (horizon T0+4), d evicts b (issued T0+1)
        assert verifier.verify(command).accepted
    assert verifier.ledger.horizon == pytest.approx(T0 + 4.0)
    assert_refused(verifier.verify(a), SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert_refused(verifier.verify(b), SecurityRejectionReason.SECURITY_REJECTION_STALE)


def test_only_accepted_commands_record_their_nonce(key, clock):
    verifier = CommandVerifier(key, clock=clock)
    stale = signed(key, clock)
    clock.advance(61.0)
    assert_refused(verifier.verify(stale), SecurityRejectionReason.SECURITY_REJECTION_STALE)
    assert stale.security.nonce not in verifier.ledger
    assert len(verifier.ledger) == 0

    forged = signed(SigningKey.from_secret("a-different-secret-entirely"), clock)
    assert_refused(verifier.verify(forged), SecurityRejectionReason.SECURITY_REJECTION_INVALID_SIGNATURE)
    assert forged.security.nonce not in verifier.ledger

    good = signed(key, clock)
    assert verifier.verify(good).accepted
    assert good.security.nonce in verifier.ledger
    assert len(verifier.ledger) == 1


def test_ledger_forgets_expired_nonces_without_raising_the_horizon():
    clock = FakeClock(T0)
    ledger = NonceLedger(capacity=2, ttl_s=10.0, clock=clock)
    ledger.record("a", T0)
    ledger.record("b", T0 + 1)
    clock.advance(20.0)
    ledger.record("c", T0 + 20)
    assert "a" not in ledger and "b" not in ledger and "c" in ledger
    assert ledger.horizon == float("-inf")
    assert ledger.evictions == 0


def test_ledger_needs_a_capacity():
    with pytest.raises(ValueError):
        NonceLedger(capacity=0)


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 4),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("new"), st.floats(-70.0, 6.0)),
            st.tuples(st.just("replay"), st.integers(0, 50)),
            st.tuples(st.just("wait"), st.floats(0.0, 30.0)),
        ),
        min_size=10,
        max_size=40,
    ),
)
def test_no_replay_is_ever_accepted(capacity, steps):
    """Whatever the ledger size, issue times and timing, a nonce is accepted at most once."""
    key = SigningKey.from_secret(SECRET)
    clock = FakeClock(T0)
    verifier = CommandVerifier(key, nonce_capacity=capacity, clock=clock)
    issued: list[AdaptationCommand] = []
    accepted: set[str] = set()
    for kind, value in steps:
        if kind == "wait":
            clock.advance(value)
            continue
        if kind == "new":
            command = signed(key, FakeClock(clock.now + value))
            issued.append(command)
        elif issued:
            command = issued[value % len(issued)]
        else:
            continue
        if verifier.verify(command).accepted:
            assert command.security.nonce not in accepted, "a replay was accepted"
            accepted.add(command.security.nonce)
        assert len(verifier.ledger) <= capacity


# --- keys ------------------------------------------------------------------------------------------------------


def test_required_key_without_the_variable_names_it():
    with pytest.raises(SecurityError, match=SECRET_ENV_VAR):
        SigningKey.resolve(required=True, env={})
    assert SECRET_ENV_VAR == "ESPER_LEYLINE_SECRET"


def test_empty_variable_counts_as_unset():
    with pytest.raises(SecurityError, match="ESPER_LEYLINE_SECRET"):
        SigningKey.resolve(required=True, env={"ESPER_LEYLINE_SECRET": ""})


def test_required_key_is_read_from_the_environment():
    key = SigningKey.resolve(required=True, env={"ESPER_LEYLINE_SECRET": SECRET})
    assert key == SigningKey.from_secret(SECRET)
    assert SigningKey.resolve(required=True, env={"OTHER": SECRET}, var="OTHER").key_id == key.key_id


def test_resolve_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("ESPER_LEYLINE_SECRET", SECRET)
    assert SigningKey.resolve(required=True).key_id == SigningKey.from_secret(SECRET).key_id
    monkeypatch.delenv("ESPER_LEYLINE_SECRET")
    with pytest.raises(SecurityError):
        SigningKey.resolve(required=True)


@pytest.mark.parametrize("secret", ["", "short", "x" * (MIN_SECRET_BYTES - 1), b"\x00" * (MIN_SECRET_BYTES - 1)])
def test_short_secrets_are_refused(secret):
    with pytest.raises(SecurityError, match=str(MIN_SECRET_BYTES)):
        SigningKey.from_secret(secret)


def test_short_secret_in_the_environment_is_refused():
    with pytest.raises(SecurityError):
        SigningKey.resolve(required=False, env={"ESPER_LEYLINE_SECRET": "short"})


def test_minimum_length_secret_is_accepted():
    assert SigningKey.from_secret("x" * MIN_SECRET_BYTES).key_id


def test_optional_key_is_a_working_random_key():
    first = SigningKey.resolve(required=False, env={})
    second = SigningKey.resolve(required=False, env={})
    assert len(first.secret) >= MIN_SECRET_BYTES
    assert first.key_id != second.key_id
    assert first.verify(b"data", first.sign(b"data"))
    assert not second.verify(b"data", first.sign(b"data"))
    clock = FakeClock(T0)
    assert CommandVerifier(first, clock=clock).verify(signed(first, clock)).accepted


def test_key_id_is_stable_and_distinguishes_secrets():
    a1, a2 = SigningKey.from_secret(SECRET), SigningKey.from_secret(SECRET.encode())
    b = SigningKey.from_secret(SECRET + "!")
    assert a1.key_id == a2.key_id
    assert a1.key_id != b.key_id
    assert SECRET not in a1.key_id


def test_repr_does_not_reveal_the_secret():
    key = SigningKey.from_secret(SECRET)
    assert SECRET not in repr(key)
    assert key.key_id in repr(key)


def test_empty_signature_never_verifies():
    key = SigningKey.from_secret(SECRET)
    assert not key.verify(b"", b"")
    assert not key.verify(b"data", b"")


# --- messages with their own signature field -------------------------------------------------------------------


def make_update() -> PolicyUpdate:
    return PolicyUpdate(
        version=1,
        policy_id="policy-7",
        training_run_id="run-1",
        payload=b"\x80\x02state-dict-bytes",
        payload_sha256="abc123",
        policy_name="tamiyo-gnn",
        training_metrics={"loss": 0.25},
    )


def test_policy_update_round_trip(key):
    update = make_update()
    sign_signature_field(key, update)
    assert len(update.signature) == 32
    assert verify_signature_field(key, update)
    assert verify_signature_field(key, PolicyUpdate.FromString(update.SerializeToString()))


def test_resigning_a_policy_update_ignores_the_old_signature(key):
    update = make_update()
    update.signature = b"stale signature from before"
    sign_signature_field(key, update)
    assert verify_signature_field(key, update)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda u: setattr(u, "payload", u.payload + b"\x00"),
        lambda u: setattr(u, "payload_sha256", "def456"),
        lambda u: u.training_metrics.__setitem__("loss", 0.0),
    ],
    ids=["payload", "digest", "metrics"],
)
def test_tampered_policy_update_fails(key, tamper):
    update = make_update()
    sign_signature_field(key, update)
    tamper(update)
    assert not verify_signature_field(key, update)


def test_policy_update_from_another_key_or_unsigned_fails(key):
    update = make_update()
    assert not verify_signature_field(key, update)
    sign_signature_field(SigningKey.from_secret("a-different-secret-entirely"), update)
    assert not verify_signature_field(key, update)


# --- no single corrupted byte is ever accepted -----------------------------------------------------------------


def _accepts_corrupted(wire: bytes, position: int, mask: int) -> bool:
    corrupted = bytearray(wire)
    corrupted[position] ^= mask
    try:
        command = AdaptationCommand.FromString(bytes(corrupted))
    except DecodeError:
        return False
    return CommandVerifier(SigningKey.from_secret(SECRET), clock=FakeClock(T0)).verify(command).accepted


@pytest.fixture(scope="module")
def signed_wire() -> bytes:
    key = SigningKey.from_secret(SECRET)
    wire = signed(key, FakeClock(T0)).SerializeToString(deterministic=True)
    assert CommandVerifier(key, clock=FakeClock(T0)).verify(AdaptationCommand.FromString(wire)).accepted
    return wire


@settings(max_examples=300, deadline=None)
@given(data=st.data(), mask=st.integers(1, 255))
def test_any_corrupted_byte_is_refused(signed_wire, data, mask):
    position = data.draw(st.integers(0, len(signed_wire) - 1))
    assert not _accepts_corrupted(signed_wire, position, mask)


def test_every_single_bit_flip_is_refused(signed_wire):
    """Exhaustive companion to the property above: every bit of every byte."""
    accepted = [
        (position, bit)
        for position in range(len(signed_wire))
        for bit in range(8)
        if _accepts_corrupted(signed_wire, position, 1 << bit)
    ]
    assert accepted == []
