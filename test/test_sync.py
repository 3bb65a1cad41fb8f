"""Stereo / N-way time synchroniser: exact and approximate pairing, ordering, drops."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from mambaglue_ros.ros.sync import StereoSynchronizer, Synchronizer, header_stamp_ns

MS = 1_000_000  # ns


@dataclass(frozen=True)
class Msg:
    """Stand-in message: the synchroniser only needs a stamp (``stamp_fn``)."""

    side: str
    stamp_ns: int
    tag: str = ""


def stamp(msg: Msg) -> int:
    return msg.stamp_ns


def make(slop_s=0.0, queue_size=10, **kwargs):
    pairs: list[tuple[int, int]] = []
    sync = StereoSynchronizer(lambda left, right: pairs.append((left.stamp_ns, right.stamp_ns)),
                              slop_s=slop_s, queue_size=queue_size, stamp_fn=stamp, **kwargs)
    return sync, pairs


def L(t_ms: float, tag: str = "") -> Msg:
    return Msg("L", round(t_ms * MS), tag)


def R(t_ms: float, tag: str = "") -> Msg:
    return Msg("R", round(t_ms * MS), tag)


def feed(sync: StereoSynchronizer, *msgs: Msg) -> None:
    for m in msgs:
        (sync.add_left if m.side == "L" else sync.add_right)(m)


def ms(pairs):
    return [(a / MS, b / MS) for a, b in pairs]


# --------------------------------------------------------------------------------------------
# exact
# --------------------------------------------------------------------------------------------
def test_exact_pairs_emitted_as_soon_as_complete():
    sync, pairs = make()
    feed(sync, L(0))
    assert pairs == []
    feed(sync, R(0))
    assert ms(pairs) == [(0, 0)]
    feed(sync, R(33), L(33), L(66), R(66))
    assert ms(pairs) == [(0, 0), (33, 33), (66, 66)]
    assert sync.emitted == 3 and sync.dropped == 0


def test_exact_ignores_near_misses():
    sync, pairs = make(slop_s=0.0)
    feed(sync, L(0), R(0.001), L(33), R(33.000001))
    assert pairs == []
    feed(sync, R(33))
    assert ms(pairs) == [(33, 33)]
    assert sync.dropped_unmatched == 2  # L0 and R0.001 are older than the emitted pair


def test_pairing_hint_names_the_offset_and_the_slop():
    sync, pairs = make(slop_s=0.0)
    assert sync.pairing_hint() == ""
    feed(sync, R(-5))
    assert sync.pairing_hint() == "no left image received yet"
    sync, pairs = make(slop_s=0.0)
    feed(sync, L(0))
    assert sync.pairing_hint() == "no right image received yet"
    advice = ("the nearest left and right stamps are +1.5 ms apart (right - left), sync_slop 0 ms: if the cameras are "
              "not stamped together, set sync_slop above that offset (seconds)")
    feed(sync, R(1.5), L(100), R(101.5))  # a right camera stamped 1.5 ms after the left: exact sync never pairs
    assert pairs == [] and sync.pairing_hint() == advice
    feed(sync, L(200))  # a left image whose right has not come yet: still the offset of the nearest pair,
    assert sync.pairing_hint() == advice  # not the newest stamps' (-98.5 ms), which would pair the wrong frames
    feed(sync, *(L(t) for t in range(300, 1700, 100)))  # the right camera stopped
    assert sync.pairing_hint() == "no right image for 1.5 s of the other's stamps"
    sync, _ = make(slop_s=0.002)
    feed(sync, L(0), R(1.5))
    assert sync.pairing_hint() == ""  # within the slop: nothing keeps them apart


def test_pairing_hint_names_repeated_stamps():
    """A driver that leaves header.stamp at 0 sends every image with one stamp: one pair goes out, then every image
    is a duplicate; the hint says so, and says nothing once pairs flow again."""
    sync, pairs = make(slop_s=0.0)
    for _ in range(5):
        feed(sync, L(0), R(0))
    assert ms(pairs) == [(0, 0)] and sync.duplicates == 8
    assert sync.pairing_hint().startswith("8 images since the last pair repeat a stamp already seen on their side")
    assert "header.stamp left at 0" in sync.pairing_hint()
    feed(sync, L(33), R(33))
    assert ms(pairs) == [(0, 0), (33, 33)] and sync.pairing_hint() == ""
    # a stray repeated stamp does not hide the real cause: cameras stamped 1.5 ms apart with exact sync
    sync, pairs = make(slop_s=0.0)
    feed(sync, L(0), R(1.5), L(0), L(100), R(101.5))
    assert pairs == [] and sync.duplicates == 1
    assert sync.pairing_hint().startswith("the nearest left and right stamps are +1.5 ms apart")


def test_header_stamp_default():
    Time = pytest.importorskip("builtin_interfaces.msg", reason="ROS message packages not installed").Time
    Header = pytest.importorskip("std_msgs.msg", reason="ROS message packages not installed").Header

    class WithHeader:
        def __init__(self, sec, nanosec):
            self.header = Header(stamp=Time(sec=sec, nanosec=nanosec))

    got = []
    sync = StereoSynchronizer(lambda left, right: got.append((left, right)))
    left, right = WithHeader(5, 7), WithHeader(5, 7)
    assert header_stamp_ns(left) == 5_000_000_007
    sync.add_left(left)
    sync.add_right(right)
    assert got == [(left, right)]


# --------------------------------------------------------------------------------------------
# approximate
# --------------------------------------------------------------------------------------------
def test_approximate_within_slop():
    sync, pairs = make(slop_s=0.005)
    feed(sync, L(0), R(3))      # right later than left
    feed(sync, L(33), R(36))
    feed(sync, R(64), L(66))    # right earlier than left
    feed(sync, R(97), L(99))
    assert ms(pairs) == [(0, 3), (33, 36), (66, 64), (99, 97)]


def test_approximate_same_rate_emits_without_waiting_for_next_frame():
    """Once the frame period is known, a pair is emitted when its second message arrives."""
    sync, pairs = make(slop_s=0.010)
    feed(sync, L(0), R(-4), L(33), R(29))  # warm-up: learn both periods (33 ms)
    n = len(pairs)
    for k in range(2, 6):
        feed(sync, L(33 * k))
        feed(sync, R(33 * k - 4))          # right 4 ms earlier: final as soon as it arrives
        assert len(pairs) == n + 1, k
        n += 1
        assert ms(pairs)[-1] == (33 * k, 33 * k - 4)


def test_no_pair_beyond_slop():
    sync, pairs = make(slop_s=0.005)
    feed(sync, L(0), R(6), L(33), R(40), L(66), R(72))
    assert pairs == []
    feed(sync, R(99), L(101))  # this one is within slop
    assert ms(pairs) == [(101, 99)]
    assert sync.dropped_unmatched == 6  # all older messages can never pair in order


def warm_up(sync, until_ms: float = -100.0) -> None:
    """Exact pairs at 33 ms period before ``until_ms``, so both periods are known."""
    feed(sync, *[m for t in (until_ms - 66, until_ms - 33) for m in (L(t), R(t))])


def test_approximate_picks_the_nearest_partner():
    sync, pairs = make(slop_s=0.030)
    warm_up(sync)
    # both rights are within slop of L(10); R(18) is nearer and must win over R(-15)
    feed(sync, R(-15), R(18), L(10))
    assert ms(pairs)[2:] == [(10, 18)]
    assert sync.dropped_unmatched == 1  # R(-15)


def test_mutual_nearest_later_left_keeps_its_partner():
    sync, pairs = make(slop_s=0.015)
    warm_up(sync)
    # R(9) is within slop of both L(0) and L(10), but nearer L(10)
    feed(sync, L(0), L(10), R(9))
    assert ms(pairs)[2:] == [(10, 9)]
    assert sync.dropped_unmatched == 1  # L(0)


def test_approximate_waits_while_a_nearer_partner_may_still_come():
    sync, pairs = make(slop_s=0.020)
    warm_up(sync)
    feed(sync, L(0), R(12))
    # R(12) is 12 ms after L(0): with a 33 ms left period no later left (>= 33) is nearer,
    # and no later right (>= 45) is nearer L(0): final at once
    assert ms(pairs)[2:] == [(0, 12)]

    sync, pairs = make(slop_s=0.020)    # periods unknown: the first pair has to wait
    feed(sync, L(20), R(5))
    assert pairs == []                   # a right in (5, 35) could still be nearer L(20)
    feed(sync, R(19))                    # right period now >= 14 ms: no later right is nearer
    assert ms(pairs) == [(20, 19)]
    assert sync.dropped_unmatched == 1   # R(5)


# --------------------------------------------------------------------------------------------
# ordering, duplicates, queues
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slop_s", [0.0, 0.002])
def test_out_of_order_arrival_within_a_topic(slop_s):
    sync, pairs = make(slop_s=slop_s)
    feed(sync, L(66), L(0), L(33))     # lefts arrive shuffled
    feed(sync, R(0))
    feed(sync, R(33))
    feed(sync, R(66))
    assert ms(pairs) == [(0, 0), (33, 33), (66, 66)]
    assert sync.dropped == 0


@pytest.mark.parametrize("slop_s", [0.0, 0.002])
def test_emission_in_stamp_order_and_late_messages_dropped(slop_s):
    sync, pairs = make(slop_s=slop_s)
    feed(sync, L(0), L(33), R(33))     # R(0) is late: pair 33 goes out first
    assert ms(pairs) == [(33, 33)]
    assert sync.dropped_unmatched == 1  # L(0) can only pair out of order now
    feed(sync, R(0))
    assert sync.dropped_late == 1
    feed(sync, L(66), R(66))
    assert ms(pairs) == [(33, 33), (66, 66)]
    stamps = [p[0] for p in pairs]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_duplicates_keep_first():
    got = []
    sync = StereoSynchronizer(lambda left, right: got.append((left.tag, right.tag)), stamp_fn=stamp)
    feed(sync, L(0, "first"), L(0, "second"))
    assert sync.duplicates == 1
    feed(sync, R(0, "right"), R(0, "right again"), L(0, "third"))  # after emission too
    assert got == [("first", "right")]
    assert sync.duplicates == 3 and sync.dropped == 0


def test_each_message_emitted_once():
    sync, pairs = make(slop_s=0.010)
    warm_up(sync)
    # R(3) is within slop of L(0) and L(5), and nearest to L(5); L(0) takes R(-4)
    feed(sync, L(0), R(-4), R(3), L(5), L(33), R(33))
    assert ms(pairs)[2:] == [(0, -4), (5, 3), (33, 33)]
    rights = [p[1] for p in pairs]
    lefts = [p[0] for p in pairs]
    assert len(set(rights)) == len(rights) and len(set(lefts)) == len(lefts)


def test_bounded_queue_drops_oldest_and_counts():
    sync, pairs = make(queue_size=3)
    feed(sync, *(L(33 * k) for k in range(5)))  # no rights: 2 evicted
    assert sync.dropped_overflow == 2
    feed(sync, R(0), R(33))                       # their partners are gone
    assert pairs == []
    feed(sync, R(66))
    assert ms(pairs) == [(66, 66)]
    assert sync.dropped_overflow == 2
    assert sync.dropped_unmatched == 2            # R(0), R(33) older than the emitted pair
    assert sync.dropped == 4
    feed(sync, R(99), L(99))
    assert ms(pairs)[-1] == (99, 99)


def test_backward_time_jump_resets():
    sync, pairs = make(slop_s=0.0, max_backward_jump_s=1.0)
    feed(sync, L(5000), R(5000))
    feed(sync, L(4500))                # 0.5 s back: late, dropped
    assert sync.dropped_late == 1 and sync.resets == 0
    feed(sync, L(0), R(0))             # 5 s back (bag restarted): start over
    assert sync.resets == 1
    assert ms(pairs) == [(5000, 5000), (0, 0)]


def test_four_way_exact_and_approximate():
    got = []
    sync = Synchronizer(4, lambda *m: got.append(tuple(x.tag for x in m)), slop_s=0.0,
                        stamp_fn=stamp)
    for i, tag in enumerate("abcd"):
        if i < 3:
            sync.add(i, Msg("", 10 * MS, tag))
    assert got == []
    sync.add(3, Msg("", 10 * MS, "d"))
    assert got == [("a", "b", "c", "d")]

    got.clear()
    sync = Synchronizer(3, lambda *m: got.append(tuple(x.stamp_ns // MS for x in m)), slop_s=0.004,
                        stamp_fn=stamp)
    for i in range(3):                 # learn the 33 ms periods
        sync.add(i, Msg("", 0))
        sync.add(i, Msg("", 33 * MS))
    assert got == [(0, 0, 0), (33, 33, 33)]
    got.clear()
    sync.add(0, Msg("", 100 * MS))
    sync.add(1, Msg("", 103 * MS))
    sync.add(2, Msg("", 97 * MS))      # each within 4 ms of the pivot but the spread is 6 ms
    assert got == []
    sync.add(2, Msg("", 101 * MS))     # nearer, spread 3 ms
    assert got == [(100, 103, 101)]


def test_argument_checks():
    with pytest.raises(ValueError, match="slop_s must be >= 0"):
        StereoSynchronizer(print, slop_s=-0.1)
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        StereoSynchronizer(print, queue_size=0)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        Synchronizer(1, print)


def test_threads_feed_concurrently():
    pairs = []
    sync = StereoSynchronizer(lambda left, right: pairs.append((left.stamp_ns, right.stamp_ns)),
                              slop_s=0.0, queue_size=2000, stamp_fn=stamp)
    n = 1000

    def run(side):
        for k in range(n):
            (sync.add_left if side == "L" else sync.add_right)(Msg(side, k * MS))

    threads = [threading.Thread(target=run, args=(s,)) for s in "LR"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pairs == [(k * MS, k * MS) for k in range(n)]
