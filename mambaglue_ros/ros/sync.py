"""Pair messages from several topics by header stamp (stereo left/right images).

Why not message_filters: it is not on PyPI (so not available in the pip/venv install) and its
ApproximateTime policy has a few behaviours that are hard to test (it may emit with a delay
depending on queue contents). We use this one everywhere, with or without a ROS install, so the
node behaves the same in both.

Policy (``slop_s == 0``, exact): a set is emitted as soon as every input has a message with the
same stamp.

Policy (``slop_s > 0``, approximate), anchored on input 0 (the left image), the pivot:
  * For a pivot message P, the candidate of every other input j is its queued message nearest in
    stamp to P; the set is valid when all its stamps lie within ``slop_s`` of each other, and
    P must also be the pivot nearest to each candidate (mutual nearest), so that a better pivot
    keeps its partner.
  * The set is emitted once it can no longer improve: no message that may still arrive on any
    input could be strictly nearer. Messages of one topic are assumed to arrive in stamp order,
    at most one per observed minimum stamp gap of that topic (its frame period), so the next one
    has a stamp >= newest seen + gap. For cameras running at the same rate with an offset below
    half a frame period this emits the pair as soon as its second message arrives: no added
    latency. The first pairs, before a topic's period is known, may wait for one more frame.
  * A pivot that has no valid set stays queued (a late partner may still come) until it is
    evicted by the bounded queue or made obsolete by a newer emitted set.

Both policies:
  * Sets are emitted in increasing stamp order and every message at most once. When a set is
    emitted, queued messages older than its members are dropped (they could only form sets
    out of order); a message arriving with a stamp older than the last emitted one on its input
    is dropped as late.
  * Out-of-order arrival within a topic is fine as long as nothing newer has been emitted yet
    (queues are kept sorted by stamp).
  * A second message with a stamp already queued (or just emitted) on the same input is a
    duplicate: the first is kept, the second discarded and counted in ``duplicates``.
  * Queues hold at most ``queue_size`` messages per input; the oldest is dropped on overflow.
  * A stamp more than ``max_backward_jump_s`` older than the last emitted set (a bag restarting
    in a loop, a simulator reset) resets the synchroniser instead of dropping everything forever.

Camera info: the node does not synchronise CameraInfo with the images; it keeps the latest one
per camera (calibration is constant, and drivers differ in how they stamp it). ``Synchronizer``
handles any number of inputs should exact 4-way sync (images + infos) ever be wanted.

Thread safety: ``add`` may be called from several executor threads; the callback runs under the
synchroniser's lock (so sets are delivered in order) and should be quick, e.g. hand the set to a
worker.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Any, Callable, Sequence

NS_PER_S = 1_000_000_000


def header_stamp_ns(msg: Any) -> int:
    """``msg.header.stamp`` as integer nanoseconds."""
    stamp = msg.header.stamp
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


class Synchronizer:
    """Time synchroniser for ``num_inputs`` topics (see the module docstring for the policy).

    callback(*msgs) receives one message per input, in input order.
    slop_s: 0 for exact stamps, else the largest stamp spread within one set (seconds).
    queue_size: messages kept per input while waiting for partners.
    stamp_fn: msg -> stamp in integer nanoseconds (default: header stamp).
    """

    def __init__(self, num_inputs: int, callback: Callable[..., None], slop_s: float = 0.0,
                 queue_size: int = 10, stamp_fn: Callable[[Any], int] = header_stamp_ns,
                 max_backward_jump_s: float | None = 1.0):
        if num_inputs < 2:
            raise ValueError("a synchroniser needs at least 2 inputs")
        if not slop_s >= 0.0:
            raise ValueError(f"slop_s must be >= 0, got {slop_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.num_inputs = num_inputs
        self.callback = callback
        self.slop_ns = round(slop_s * NS_PER_S)
        self.queue_size = queue_size
        self.stamp_fn = stamp_fn
        self.max_backward_jump_ns = (None if max_backward_jump_s is None
                                     else round(max_backward_jump_s * NS_PER_S))
        self._lock = threading.RLock()
        self.emitted = 0
        self.duplicates = 0
        self.dropped_overflow = 0   # evicted from a full queue
        self.dropped_unmatched = 0  # older than an emitted set: could only pair out of order
        self.dropped_late = 0       # arrived older than the last emitted set on its input
        self.resets = 0
        self.reset()

    @property
    def dropped(self) -> int:
        """Messages dropped without being emitted (overflow + unmatched + late; not duplicates)."""
        return self.dropped_overflow + self.dropped_unmatched + self.dropped_late

    def reset(self) -> None:
        """Forget queued messages and stamp history (e.g. after a time jump); counters are kept."""
        with self._lock:
            # per input: sorted stamps and the messages in the same order
            self._stamps: list[list[int]] = [[] for _ in range(self.num_inputs)]
            self._msgs: list[list[Any]] = [[] for _ in range(self.num_inputs)]
            self._newest: list[int | None] = [None] * self.num_inputs
            self._min_gap: list[int | None] = [None] * self.num_inputs
            self._recent: list[deque[int]] = [deque(maxlen=self.queue_size + 1)
                                              for _ in range(self.num_inputs)]
            self._last_emitted: list[int | None] = [None] * self.num_inputs
            self._duplicates_since_emit = 0  # for pairing_hint: stamps that do not advance never complete a set

    def add(self, index: int, msg: Any) -> None:
        """Feed one message of input ``index``; calls the callback for every set it completes."""
        stamp = int(self.stamp_fn(msg))
        with self._lock:
            last = self._last_emitted[index]
            if last is not None and stamp <= last:
                if (self.max_backward_jump_ns is not None
                        and last - stamp > self.max_backward_jump_ns):
                    self.resets += 1
                    self.reset()
                elif stamp == last:
                    self.duplicates += 1
                    self._duplicates_since_emit += 1
                    return
                else:
                    self.dropped_late += 1
                    return
            stamps, msgs = self._stamps[index], self._msgs[index]
            pos = bisect.bisect_left(stamps, stamp)
            if pos < len(stamps) and stamps[pos] == stamp:
                self.duplicates += 1
                self._duplicates_since_emit += 1
                return
            stamps.insert(pos, stamp)
            msgs.insert(pos, msg)
            if len(stamps) > self.queue_size:
                del stamps[0], msgs[0]
                self.dropped_overflow += 1
            self._observe(index, stamp)
            while self._emit_one():
                pass

    def _observe(self, index: int, stamp: int) -> None:
        """Track the newest stamp and the minimum stamp gap (frame period) of an input."""
        newest = self._newest[index]
        self._newest[index] = stamp if newest is None else max(newest, stamp)
        recent = self._recent[index]
        recent.append(stamp)
        ordered = sorted(recent)
        gaps = [b - a for a, b in zip(ordered, ordered[1:]) if b > a]
        self._min_gap[index] = min(gaps) if gaps else None

    def _earliest_next(self, index: int) -> int:
        """Lowest stamp a message still to come on ``index`` can have (in-order assumption)."""
        newest = self._newest[index]
        assert newest is not None
        return newest + (self._min_gap[index] or 1)

    @staticmethod
    def _nearest(stamps: Sequence[int], target: int) -> int | None:
        """Position of the stamp nearest to ``target`` (the older one on ties), None if empty."""
        if not stamps:
            return None
        pos = bisect.bisect_left(stamps, target)
        if pos == len(stamps):
            return pos - 1
        if pos > 0 and target - stamps[pos - 1] <= stamps[pos] - target:
            return pos - 1
        return pos

    def _final(self, index: int, target: int, distance: int) -> bool:
        """True when no future message of ``index`` can be strictly nearer ``target`` than ``distance``."""
        return self._earliest_next(index) >= target + distance

    def _emit_one(self) -> bool:
        """Emit the oldest complete set, if any; returns whether one was emitted."""
        if any(not s for s in self._stamps):
            return False
        pivots = self._stamps[0]
        for p_pos, p_stamp in enumerate(pivots):
            chosen = self._select(p_pos, p_stamp)
            if chosen == "wait":
                return False  # a newer pivot cannot be final either while this one waits
            if chosen is None:
                continue
            self._emit([p_pos] + chosen)
            return True
        return False

    def _select(self, p_pos: int, p_stamp: int) -> list[int] | str | None:
        """Partner positions for pivot ``p_pos`` in inputs 1.., "wait" if undecided yet, None if none."""
        pivots = self._stamps[0]
        positions: list[int] = []
        for j in range(1, self.num_inputs):
            stamps = self._stamps[j]
            pos = self._nearest(stamps, p_stamp)
            assert pos is not None
            distance = abs(stamps[pos] - p_stamp)
            if self.slop_ns == 0:
                if distance != 0:
                    return None  # exact: only an identical stamp will do; it may still come
                positions.append(pos)
                continue
            if not self._final(j, p_stamp, distance):
                return "wait"
            if distance > self.slop_ns:
                return None
            # mutual nearest: the partner must not be nearer to another pivot (queued or future)
            if self._nearest(pivots, stamps[pos]) != p_pos:
                return None
            if not self._final(0, stamps[pos], distance):
                return "wait"
            positions.append(pos)
        member_stamps = [p_stamp] + [self._stamps[j][pos] for j, pos in enumerate(positions, 1)]
        if max(member_stamps) - min(member_stamps) > self.slop_ns:
            return None
        return positions

    def _emit(self, positions: list[int]) -> None:
        msgs = []
        for index, pos in enumerate(positions):
            stamps, queue = self._stamps[index], self._msgs[index]
            msgs.append(queue[pos])
            self._last_emitted[index] = stamps[pos]
            # everything older than the emitted member could only be paired out of order
            self.dropped_unmatched += pos
            del stamps[: pos + 1], queue[: pos + 1]
        self.emitted += 1
        self._duplicates_since_emit = 0
        self.callback(*msgs)


class StereoSynchronizer(Synchronizer):
    """Left/right image pairs: ``callback(left_msg, right_msg)``.

    slop_s: 0 = exact stamps (hardware-triggered or driver-stamped pairs), else the largest
        left/right stamp difference accepted (seconds). Left is the pivot (module docstring).
    queue_size: messages kept per side while waiting for the partner.
    """

    def __init__(self, callback: Callable[[Any, Any], None], slop_s: float = 0.0,
                 queue_size: int = 10, stamp_fn: Callable[[Any], int] = header_stamp_ns,
                 max_backward_jump_s: float | None = 1.0):
        super().__init__(2, callback, slop_s, queue_size, stamp_fn, max_backward_jump_s)

    def add_left(self, msg: Any) -> None:
        """Subscription callback of the left image."""
        self.add(0, msg)

    def add_right(self, msg: Any) -> None:
        """Subscription callback of the right image."""
        self.add(1, msg)

    def pairing_hint(self) -> str:
        """Why left and right images form no pair, for a person; "" when nothing says they cannot: images that
        repeat stamps already seen (a driver that leaves header.stamp at 0, a frozen clock), a side that sent
        nothing, or stopped (its newest stamp more than max(1 s, 5 frame periods) behind the other's), or the
        nearest left/right stamps among the recent ones further apart than ``slop_s`` (cameras that are not triggered
        together need a slop above that offset)."""
        with self._lock:
            left, right = list(self._recent[0]), list(self._recent[1])
            newest, gaps = list(self._newest), [g for g in self._min_gap if g]
            repeated = self._duplicates_since_emit
        if not left and not right:
            return ""
        if not left or not right:
            return f"no {'left' if not left else 'right'} image received yet"
        lag = newest[0] - newest[1]  # > 0: the right camera is behind
        if abs(lag) > max(NS_PER_S, 5 * max(gaps, default=0)):
            return f"no {'right' if lag > 0 else 'left'} image for {abs(lag) / NS_PER_S:.1f} s of the other's stamps"
        offset = min((r - l for l in left for r in right), key=abs)
        if abs(offset) <= self.slop_ns:
            if repeated:  # nothing else keeps them apart: the stamps do not advance
                return (f"{repeated} images since the last pair repeat a stamp already seen on their side (newest "
                        f"{max(s for s in newest if s is not None) / NS_PER_S:.3f} s): is the camera driver "
                        "stamping its images (header.stamp left at 0, or a clock that does not advance)?")
            return ""
        return (f"the nearest left and right stamps are {offset / 1e6:+.1f} ms apart (right - left), sync_slop "
                f"{self.slop_ns / 1e6:g} ms: if the cameras are not stamped together, set sync_slop above that offset "
                "(seconds)")
