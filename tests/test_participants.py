"""ParticipantGate: each frame meets the choice in force when it was captured."""

from __future__ import annotations

from egresskit import ParticipantChoice, ParticipantGate
from egresskit.stages.participants import HISTORY_S


def test_a_frame_meets_the_choice_of_its_capture_instant():
    gate = ParticipantGate(ParticipantChoice.of(exclude=["bob"]))
    gate.choose(ParticipantChoice.of(), at=10.0)  # bob let in at 10 s
    gate.choose(ParticipantChoice.of(include=["alice"]), at=20.0)  # only alice from 20 s
    assert not gate.admits("bob", 9.99) and gate.admits("alice", 9.99)
    assert gate.admits("bob", 10.0) and gate.admits("bob", 19.99)
    assert not gate.admits("bob", 20.0) and gate.admits("alice", 25.0)
    assert not gate.admits("bob") and not gate.admits("carol")  # untimed: the choice now


def test_a_long_history_keeps_every_choice_a_frame_can_still_meet():
    gate = ParticipantGate()
    for n in range(1, 1000):  # bob out at odd seconds, in at even ones
        gate.choose(ParticipantChoice.of(exclude=["bob"] if n % 2 else []), at=float(n))
    assert gate.admits("bob", 998.5) and not gate.admits("bob", 999.0)
    # HISTORY_S before the newest choice, each instant still meets its own choice
    assert not gate.admits("bob", 999.0 - HISTORY_S + 0.5)  # 989.5: out since 989
    assert gate.admits("bob", 999.0 - HISTORY_S + 1.5)  # 990.5: in since 990
