"""The status rules of design.md, as pure functions."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from receiver.status import FINAL, RANK, Observation, Status, compose, current

T0 = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_late_ack_after_delivery_does_not_regress_status() -> None:
    events = [Observation(Status.DELIVERED, at(10)), Observation(Status.SENT, at(20))]
    assert compose(events).status is Status.DELIVERED


def test_unknown_never_replaces_a_known_status() -> None:
    events = [Observation(Status.SENT, at(1)), Observation(Status.UNKNOWN, at(9))]
    assert compose(events).status is Status.SENT


def test_only_unknown_events_give_unknown() -> None:
    assert compose([Observation(Status.UNKNOWN, at(1))]).status is Status.UNKNOWN


def test_no_events_give_unknown() -> None:
    assert compose([]).status is Status.UNKNOWN


def test_between_equal_rank_finals_the_later_one_wins() -> None:
    events = [Observation(Status.EXPIRED, at(5)), Observation(Status.FAILED, at(3))]
    assert current(events) == Observation(Status.EXPIRED, at(5))


def test_delivery_after_failure_wins() -> None:
    events = [Observation(Status.FAILED, at(9)), Observation(Status.DELIVERED, at(5))]
    assert compose(events).status is Status.DELIVERED


def test_read_outranks_delivered() -> None:
    assert RANK[Status.READ] > RANK[Status.DELIVERED]
    events = [Observation(Status.READ, at(1)), Observation(Status.DELIVERED, at(2))]
    assert compose(events).status is Status.READ


def test_failed_viber_then_delivered_sms_is_delivered() -> None:
    events = [
        Observation(Status.ACCEPTED, at(0), "viber"),
        Observation(Status.ACCEPTED, at(0), "sms"),
        Observation(Status.FAILED, at(5), "viber"),
        Observation(Status.DELIVERED, at(9), "sms"),
    ]
    outcome = compose(events, ("viber", "sms"))
    assert outcome.status is Status.DELIVERED
    assert outcome.channel == "sms"
    assert [(a.channel, a.status) for a in outcome.attempts] == [
        ("viber", Status.FAILED),
        ("sms", Status.DELIVERED),
    ]


def test_failed_viber_while_sms_is_pending_is_sent_not_failed() -> None:
    events = [
        Observation(Status.ACCEPTED, at(0), "viber"),
        Observation(Status.ACCEPTED, at(0), "sms"),
        Observation(Status.FAILED, at(5), "viber"),
    ]
    assert compose(events, ("viber", "sms")).status is Status.SENT


def test_failed_viber_with_sms_known_only_from_the_order_is_not_failed() -> None:
    events = [Observation(Status.FAILED, at(5), "viber")]
    assert compose(events, ("viber", "sms")).status is Status.SENT


def test_every_channel_failed_gives_the_last_channels_final_status() -> None:
    events = [
        Observation(Status.FAILED, at(5), "viber"),
        Observation(Status.EXPIRED, at(9), "sms"),
    ]
    outcome = compose(events, ("viber", "sms"))
    assert outcome.status is Status.EXPIRED
    assert outcome.channel == "sms"


def test_last_channel_follows_registered_order_not_time() -> None:
    # sms is last in the registered order even though its failure was reported first.
    events = [
        Observation(Status.REJECTED, at(1), "sms"),
        Observation(Status.FAILED, at(9), "viber"),
    ]
    assert compose(events, ("viber", "sms")).status is Status.REJECTED


def test_an_unfinished_earlier_channel_keeps_the_message_open() -> None:
    events = [Observation(Status.SENT, at(1), "viber"), Observation(Status.FAILED, at(9), "sms")]
    assert compose(events, ("viber", "sms")).status is Status.SENT


def test_single_failed_channel_without_order_is_failed() -> None:
    assert compose([Observation(Status.FAILED, at(1), "sms")]).status is Status.FAILED


def test_message_level_final_applies_over_channel_attempts() -> None:
    events = [Observation(Status.SENT, at(1), "sms"), Observation(Status.FAILED, at(2))]
    assert compose(events).status is Status.FAILED


def test_registered_but_unreported_message_is_accepted() -> None:
    events = [
        Observation(Status.ACCEPTED, at(0), "viber"),
        Observation(Status.ACCEPTED, at(0), "sms"),
    ]
    assert compose(events, ("viber", "sms")).status is Status.ACCEPTED


def test_final_statuses_are_the_documented_six() -> None:
    assert {s.value for s in FINAL} == {
        "delivered",
        "read",
        "failed",
        "expired",
        "rejected",
        "cancelled",
    }


channels = st.sampled_from([None, "sms", "viber", "whatsapp"])
observations = st.builds(
    Observation,
    status=st.sampled_from(list(Status)),
    occurred_at=st.one_of(st.none(), st.integers(0, 50).map(at)),
    channel=channels,
)
orders = st.sampled_from([(), ("viber", "sms"), ("whatsapp", "viber", "sms"), ("sms",)])


@given(st.lists(observations, max_size=12), orders, st.randoms(use_true_random=False))
def test_any_permutation_of_the_same_events_gives_the_same_status(
    events: list[Observation], order: tuple[str, ...], rnd: object
) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]  # hypothesis' Random
    assert compose(shuffled, order) == compose(events, order)


@given(st.lists(observations, min_size=1, max_size=12), orders)
def test_repeating_events_changes_nothing(
    events: list[Observation], order: tuple[str, ...]
) -> None:
    assert compose(events + events, order) == compose(events, order)


@given(st.lists(observations, max_size=12), observations, orders)
def test_an_unknown_report_never_changes_a_known_status(
    events: list[Observation], extra: Observation, order: tuple[str, ...]
) -> None:
    before = compose(events, order)
    after = compose([*events, Observation(Status.UNKNOWN, extra.occurred_at, extra.channel)], order)
    if before.status is not Status.UNKNOWN:
        assert after.status is before.status


def test_an_unknown_report_on_a_new_channel_does_not_reopen_a_failed_message() -> None:
    events = [Observation(Status.FAILED, at(1), "sms"), Observation(Status.UNKNOWN, at(2), "viber")]
    assert compose(events).status is Status.FAILED
