"""
Which app gives way when the pool is full: a frequency-aware choice in the
manner of W-TinyLFU (Einziger, Friedman and Manes, "TinyLFU: A Highly
Efficient Cache Admission Policy", 2017) instead of plain least recently used.

Every request counts its app in a small count-min sketch (L{FrequencySketch})
whose counters are halved every so many requests, so that the counts follow
what is popular now.  The apps whose workers started last form the admission
window (5 % of the pool): a new app always gets its worker and enters the
window, where it cannot be retired.  When the pool is full, the app that
gives way is, of the others, the one asked for least often lately (the least
recently used of equals).  An app asked for once therefore retires itself as
soon as it leaves the window, instead of a steady popular app, which plain
LRU retires whenever enough others come in between.  (The paper's admission
duel, window victim against the main area's LRU victim, picks about the same
apps on the benchmark's traffic; this form also behaves when many workers
are starting at once, which the pool must not retire.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence

ROWS = 4
"""Rows of the sketch: each key has a counter in each, at a different slice of its hash."""
_SLICE = 16
_MASK64 = (1 << 64) - 1
COUNTER_MAX = 15
"""A counter stops here (4 bits in the paper): enough to tell hot from cold."""


class FrequencySketch:
    """
    How often each key was added lately, estimated: a count-min sketch of
    L{ROWS} rows of C{width} counters (a power of two, at most 2^16), every
    counter halved once C{sample} adds have been made since the last
    halving.  A key's counter in row n is at bits 16n and up of its
    (64-bit) hash.  An estimate is never below the true count since the
    last halving (but by collisions).
    """

    def __init__(self, width: int, sample: int) -> None:
        bits = min(_SLICE, max(4, (width - 1).bit_length()))
        self._mask = (1 << bits) - 1
        self._rows = [[0] * (self._mask + 1) for _ in range(ROWS)]
        self._sample = sample
        self._added = 0

    def add(self, key: str) -> None:
        """Count one more use of C{key}; halve every counter when the sample is full."""
        # Every request of the pool comes here: a plain loop, no lists made.
        spread, mask = hash(key) & _MASK64, self._mask
        for row in self._rows:
            slot = spread & mask
            if row[slot] < COUNTER_MAX:
                row[slot] += 1
            spread >>= _SLICE
        self._added += 1
        if self._added >= self._sample:
            self._halve()

    def estimate(self, key: str) -> int:
        """How often C{key} was added lately: the least of its counters."""
        spread, mask = hash(key) & _MASK64, self._mask
        least = COUNTER_MAX
        for row in self._rows:
            least = min(least, row[spread & mask])
            spread >>= _SLICE
        return least

    def _halve(self) -> None:
        """Age every count: halve them all, so that old popularity fades."""
        for row in self._rows:
            row[:] = [count >> 1 for count in row]
        self._added //= 2


class FrequencyEviction:
    """
    The pool's eviction policy for at most C{capacity} resident keys (apps
    with a live worker).  The pool calls L{record} for every request,
    L{admitted} when a key's worker starts, and L{victim} when it is full.
    """

    def __init__(self, capacity: int, window: float = 0.05) -> None:
        capacity = max(1, capacity)
        # A longer sample than the paper's 10 x capacity: with a few hundred
        # apps, the counts of the less popular ones are otherwise mostly 0 or
        # 1.  On the benchmark's Zipf traffic (200 apps, s = 1.1, 50 workers)
        # 10 x misses 22 %, 50 x 19.6 %; LRU 26.8 %, the floor 18.5 %.
        self._sketch = FrequencySketch(width=8 * capacity, sample=50 * capacity)
        # A window of 5 % of the pool besides the app that needs room (none in
        # pools of less than 10): 19.7 % misses on the stream above.
        self._window: deque[str] = deque(maxlen=round(capacity * window))

    def record(self, key: str) -> None:
        """A request for C{key}."""
        self._sketch.add(key)

    def admitted(self, key: str) -> None:
        """C{key} got a worker: it enters the admission window."""
        if key in self._window:
            self._window.remove(key)
        if self._window.maxlen:
            self._window.append(key)

    def frequency(self, key: str) -> int:
        """How often C{key} was asked for lately (estimated)."""
        return self._sketch.estimate(key)

    def victim(self, residents: Sequence[str], spare: Collection[str] = ()) -> str | None:
        """
        Of C{residents} (least recently used first; not the key that needs
        room), the one to give way: of those not in the admission window,
        the one asked for least often lately (the least recently used of
        equals).  Keys in C{spare} (apps whose workers are still starting for
        requests that wait) go only when no other can, and so do those in
        the window.  C{None} when there are no residents.
        """
        present = set(residents)
        window = [key for key in self._window if key in present]
        main = [key for key in residents if key not in window and key not in spare]
        if main:
            return min(main, key=self.frequency)  # the first of equals
        others = [key for key in residents if key not in spare] or list(residents)
        return others[0] if others else None
