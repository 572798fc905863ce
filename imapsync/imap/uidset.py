# -*- test-case-name: tests.test_imap_uidset -*-
"""Immutable sets of UIDs kept as merged ranges, and the IMAP sequence-set syntax.

Mailboxes hold up to millions of UIDs in a few long runs, so a set is a sorted
tuple of inclusive ``(start, end)`` ranges: sizes and operations cost
O(ranges), not O(UIDs).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import chain
from operator import itemgetter
from typing import Iterable, Iterator, List, Tuple

import attrs

from imapsync.imap.errors import ProtocolError

Range = Tuple[int, int]

# UIDs and message numbers are 32-bit unsigned, nz-number in RFC 3501.
MAX_UID = 2**32 - 1

# RFC 3501 sequence-set without "*": nz-number has no leading zero.
_SEQUENCE_SET = re.compile(
    rb"[1-9][0-9]{0,9}(?::[1-9][0-9]{0,9})?(?:,[1-9][0-9]{0,9}(?::[1-9][0-9]{0,9})?)*"
)

# The longest text of one range, b"4294967295:4294967294": chunks() needs room for it.
_LONGEST_RANGE = 2 * len(str(MAX_UID)) + 1

_start = itemgetter(0)


def _merge(ranges: List[Range]) -> Tuple[Range, ...]:
    """Merge ``(start, end)`` pairs sorted by start, joining overlapping and adjacent ones."""
    if not ranges:
        return ()
    merged: List[Range] = []
    low, high = ranges[0]
    for start, end in ranges:
        if start > high + 1:
            merged.append((low, high))
            low, high = start, end
        elif end > high:
            high = end
    merged.append((low, high))
    return tuple(merged)


def _check_canonical(instance: object, attribute: object, ranges: Tuple[Range, ...]) -> None:
    """attrs validator: ``ranges`` sorted, disjoint, non-adjacent, within 1..MAX_UID."""
    previous = -1  # so that the first start must be at least 1
    for start, end in ranges:
        if not (type(start) is int and type(end) is int and previous + 1 < start <= end):
            raise ValueError(
                "UIDSet ranges must be sorted, disjoint, non-adjacent int pairs, "
                f"not {(start, end)!r}"
            )
        previous = end
    if previous > MAX_UID:
        raise ValueError(f"UIDs must be at most {MAX_UID}")


def _parse_ranges(data: bytes) -> List[Range]:
    """Validate a sequence-set and return its ranges in the given order."""
    if _SEQUENCE_SET.fullmatch(data) is None:
        raise ProtocolError(f"invalid sequence set {data[:80]!r}")
    ranges = []
    for item in data.split(b","):
        start, _, end = item.partition(b":")
        first = int(start)
        last = int(end) if end else first
        if first > MAX_UID or last > MAX_UID:
            raise ProtocolError(f"UID out of range in sequence set {data[:80]!r}")
        ranges.append((first, last))
    return ranges


def parse_uid_list(data: bytes, max_count: int = 1_000_000) -> Tuple[int, ...]:
    """Expand a uid-set in the order given, as APPENDUID and COPYUID need it.

    ``b"7,9:10"`` gives ``(7, 9, 10)``; a range ``a:b`` with ``a > b`` still
    expands ascending (RFC 4315 treats ``a:b`` and ``b:a`` alike).  More than
    ``max_count`` UIDs raise ProtocolError, so a hostile server cannot make us
    build a tuple of four billion ints.
    """
    ranges = _parse_ranges(data)
    if sum(abs(end - start) + 1 for start, end in ranges) > max_count:
        raise ProtocolError(f"more than {max_count} UIDs in {data[:80]!r}")
    uids: List[int] = []
    for start, end in ranges:
        if start > end:
            start, end = end, start
        uids.extend(range(start, end + 1))
    return tuple(uids)


@attrs.frozen(repr=False)
class UIDSet:
    """An immutable set of UIDs (1 to 2**32-1).

    ``ranges`` is always canonical: sorted, disjoint, non-adjacent inclusive
    ``(start, end)`` pairs, so equal sets compare and hash equal.  The
    constructor checks that form (in linear time, without sorting); build from
    arbitrary ranges with ``from_ranges`` and from UIDs with ``from_iterable``.
    """

    ranges: Tuple[Range, ...] = attrs.field(default=(), validator=_check_canonical)

    @classmethod
    def from_ranges(cls, ranges: Iterable[Tuple[int, int]]) -> UIDSet:
        """Build a set from inclusive ranges in any order or direction, possibly overlapping."""
        pairs = [(end, start) if start > end else (start, end) for start, end in ranges]
        pairs.sort()
        return cls(_merge(pairs))

    @classmethod
    def from_iterable(cls, uids: Iterable[int]) -> UIDSet:
        """Build a set from UIDs in any order, with duplicates allowed.

        Sorts once, then merges runs in one pass: fine for millions of UIDs.
        """
        ordered = sorted(uids)
        if not ordered:
            return cls()
        ranges: List[Range] = []
        low = high = ordered[0]
        for uid in ordered:
            if uid > high + 1:
                ranges.append((low, high))
                low = high = uid
            elif uid > high:
                high = uid
        ranges.append((low, high))
        return cls(tuple(ranges))

    @classmethod
    def parse(cls, data: bytes) -> UIDSet:
        """Parse a sequence-set such as ``b"1:3,5,9:7"`` (no ``*``).

        Raise ProtocolError for anything else, including 0 and the empty string.
        """
        return cls.from_ranges(_parse_ranges(data))

    def to_bytes(self) -> bytes:
        """The compact wire form, ``b"1:3,5"``; ``b""`` for the empty set."""
        return b",".join(
            b"%d" % start if start == end else b"%d:%d" % (start, end)
            for start, end in self.ranges
        )

    __bytes__ = to_bytes

    def __repr__(self) -> str:
        return f"UIDSet.parse({self.to_bytes()!r})" if self.ranges else "UIDSet()"

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(range(start, end + 1) for start, end in self.ranges)

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        index = bisect_right(self.ranges, uid, key=_start) - 1
        return index >= 0 and uid <= self.ranges[index][1]

    def min(self) -> int:
        """The smallest UID; ValueError if the set is empty."""
        if not self.ranges:
            raise ValueError("min() of an empty UIDSet")
        return self.ranges[0][0]

    def max(self) -> int:
        """The largest UID; ValueError if the set is empty."""
        if not self.ranges:
            raise ValueError("max() of an empty UIDSet")
        return self.ranges[-1][1]

    def union(self, other: UIDSet) -> UIDSet:
        return UIDSet(_merge(sorted(self.ranges + other.ranges)))

    def intersection(self, other: UIDSet) -> UIDSet:
        result: List[Range] = []
        mine, theirs = self.ranges, other.ranges
        i = j = 0
        while i < len(mine) and j < len(theirs):
            start = max(mine[i][0], theirs[j][0])
            end = min(mine[i][1], theirs[j][1])
            if start <= end:
                result.append((start, end))
            # Drop whichever range ends first: it cannot meet anything further.
            if mine[i][1] < theirs[j][1]:
                i += 1
            else:
                j += 1
        return UIDSet(tuple(result))

    def difference(self, other: UIDSet) -> UIDSet:
        result: List[Range] = []
        theirs = other.ranges
        j = 0
        for start, end in self.ranges:
            # Skip the ranges to remove that end before this one starts.
            while j < len(theirs) and theirs[j][1] < start:
                j += 1
            k = j
            while k < len(theirs) and theirs[k][0] <= end:
                if theirs[k][0] > start:
                    result.append((start, theirs[k][0] - 1))
                start = theirs[k][1] + 1
                k += 1
            if start <= end:
                result.append((start, end))
        return UIDSet(tuple(result))

    def __or__(self, other: UIDSet) -> UIDSet:
        if not isinstance(other, UIDSet):
            return NotImplemented
        return self.union(other)

    def __and__(self, other: UIDSet) -> UIDSet:
        if not isinstance(other, UIDSet):
            return NotImplemented
        return self.intersection(other)

    def __sub__(self, other: UIDSet) -> UIDSet:
        if not isinstance(other, UIDSet):
            return NotImplemented
        return self.difference(other)

    def chunks(self, max_bytes: int) -> Iterator[UIDSet]:
        """Split into sets whose ``to_bytes()`` is at most ``max_bytes`` long.

        For commands whose line would otherwise exceed what servers accept
        (Dovecot: 64 KiB).  ``max_bytes`` must hold the longest range (21).
        """
        if max_bytes < _LONGEST_RANGE:
            raise ValueError(f"max_bytes must be at least {_LONGEST_RANGE}")
        chunk: List[Range] = []
        size = -1  # no comma before the first range
        for start, end in self.ranges:
            width = len(b"%d" % start) if start == end else len(b"%d:%d" % (start, end))
            if chunk and size + 1 + width > max_bytes:
                yield UIDSet(tuple(chunk))
                chunk, size = [], -1
            chunk.append((start, end))
            size += 1 + width
        if chunk:
            yield UIDSet(tuple(chunk))
