# -*- test-case-name: tests.test_imap_uidset -*-
"""Tests for imapsync.imap.uidset."""

from __future__ import annotations

from typing import FrozenSet, List, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsync.imap.errors import ProtocolError
from imapsync.imap.uidset import MAX_UID, UIDSet, parse_uid_list

# Small UIDs collide and touch often, which exercises merging; a few huge
# ones reach the 32-bit edge.
uids = st.one_of(st.integers(1, 60), st.integers(1, MAX_UID))
uid_sets = st.frozensets(uids, max_size=40)
ranges = st.tuples(uids, uids)


def expand(pairs: List[Tuple[int, int]]) -> FrozenSet[int]:
    result: set[int] = set()
    for a, b in pairs:
        # Huge ranges would not fit in a set: the strategies keep them narrow.
        result.update(range(min(a, b), max(a, b) + 1))
    return frozenset(result)


narrow_ranges = st.integers(1, MAX_UID - 50).flatmap(
    lambda start: (
        st.tuples(st.just(start), st.integers(start, start + 50))
        | st.tuples(st.integers(start, start + 50), st.just(start))
    )
)


class ParseTests(SynchronousTestCase):
    def test_parse(self) -> None:
        s = UIDSet.parse(b"1:3,5,9:7")
        self.assertEqual(s.ranges, ((1, 3), (5, 5), (7, 9)))
        self.assertEqual(list(s), [1, 2, 3, 5, 7, 8, 9])

    def test_reversed_range(self) -> None:
        self.assertEqual(UIDSet.parse(b"9:7"), UIDSet.parse(b"7:9"))

    def test_merges_overlapping_and_adjacent(self) -> None:
        self.assertEqual(UIDSet.parse(b"5,1:3,4,2:2,10:12,11").to_bytes(), b"1:5,10:12")

    def test_largest_uid(self) -> None:
        self.assertEqual(list(UIDSet.parse(b"4294967295")), [MAX_UID])

    def test_invalid(self) -> None:
        for data in [
            b"",
            b"0",
            b"0:3",
            b"3:0",
            b"01",
            b"*",
            b"1:*",
            b"1:",
            b":1",
            b",1",
            b"1,",
            b"1,,2",
            b"1 2",
            b" 1",
            b"1\r\n",
            b"-1",
            b"+1",
            b"1:2:3",
            b"4294967296",
            b"99999999999",
            b"1_0",
            b"\xd9\xa1",
        ]:
            with self.subTest(data=data):
                self.assertRaises(ProtocolError, UIDSet.parse, data)


class FormatTests(SynchronousTestCase):
    def test_to_bytes(self) -> None:
        s = UIDSet.from_iterable([5, 1, 2, 3, 3])
        self.assertEqual(s.to_bytes(), b"1:3,5")
        self.assertEqual(bytes(s), b"1:3,5")

    def test_empty(self) -> None:
        s = UIDSet()
        self.assertEqual(s.to_bytes(), b"")
        self.assertFalse(s)
        self.assertEqual(len(s), 0)
        self.assertEqual(list(s), [])
        self.assertRaises(ValueError, s.min)
        self.assertRaises(ValueError, s.max)

    def test_repr(self) -> None:
        self.assertEqual(repr(UIDSet.parse(b"1:3")), "UIDSet.parse(b'1:3')")
        self.assertEqual(repr(UIDSet()), "UIDSet()")


class ConstructionTests(SynchronousTestCase):
    def test_constructor_rejects_non_canonical(self) -> None:
        for bad in [
            ((3, 1),),
            ((5, 6), (1, 2)),
            ((1, 2), (3, 4)),  # adjacent: must be merged
            ((1, 5), (4, 8)),
            ((0, 1),),
            ((1, MAX_UID + 1),),
            ((1.0, 2),),
        ]:
            with self.subTest(ranges=bad):
                self.assertRaises(ValueError, UIDSet, bad)

    def test_from_iterable_rejects_out_of_range(self) -> None:
        self.assertRaises(ValueError, UIDSet.from_iterable, [0, 1])
        self.assertRaises(ValueError, UIDSet.from_iterable, [MAX_UID + 1])

    def test_from_ranges(self) -> None:
        self.assertEqual(UIDSet.from_ranges([(9, 7), (1, 3), (2, 5)]).to_bytes(), b"1:5,7:9")

    def test_large(self) -> None:
        """A million UIDs in a few runs: sizes come from the ranges."""
        s = UIDSet.from_iterable(range(1, 1_000_001))
        self.assertEqual(s.ranges, ((1, 1_000_000),))
        everything = UIDSet(((1, MAX_UID),))
        self.assertEqual(len(everything), MAX_UID)
        self.assertIn(MAX_UID, everything)
        self.assertEqual(len(everything - s), MAX_UID - 1_000_000)

    def test_hashable_and_equal(self) -> None:
        self.assertEqual(UIDSet.parse(b"1,2,3"), UIDSet.parse(b"1:3"))
        self.assertEqual(hash(UIDSet.parse(b"1,2,3")), hash(UIDSet.parse(b"3:1")))


class SetSemanticsTests(SynchronousTestCase):
    """UIDSet behaves like a Python set of ints."""

    @given(uid_sets)
    def test_from_iterable(self, expected: FrozenSet[int]) -> None:
        s = UIDSet.from_iterable(expected)
        self.assertEqual(list(s), sorted(expected))
        self.assertEqual(len(s), len(expected))
        self.assertEqual(bool(s), bool(expected))
        if expected:
            self.assertEqual(s.min(), min(expected))
            self.assertEqual(s.max(), max(expected))
        # Canonical: no two ranges touch.
        for (_, end), (start, _) in zip(s.ranges, s.ranges[1:], strict=False):
            self.assertLess(end + 1, start)

    @given(uid_sets)
    def test_round_trip(self, expected: FrozenSet[int]) -> None:
        s = UIDSet.from_iterable(expected)
        if expected:
            self.assertEqual(UIDSet.parse(s.to_bytes()), s)

    @given(st.lists(narrow_ranges, min_size=1, max_size=10))
    def test_parse_any_ranges(self, pairs: List[Tuple[int, int]]) -> None:
        text = b",".join(b"%d:%d" % pair for pair in pairs)
        self.assertEqual(frozenset(UIDSet.parse(text)), expand(pairs))
        self.assertEqual(UIDSet.from_ranges(pairs), UIDSet.parse(text))

    @given(uid_sets, st.lists(uids, max_size=10))
    def test_contains(self, members: FrozenSet[int], probes: List[int]) -> None:
        s = UIDSet.from_iterable(members)
        for uid in list(members) + probes + [0, MAX_UID + 1]:
            self.assertEqual(uid in s, uid in members)
        self.assertNotIn("1", s)

    @given(uid_sets, uid_sets)
    def test_operations(self, a: FrozenSet[int], b: FrozenSet[int]) -> None:
        x, y = UIDSet.from_iterable(a), UIDSet.from_iterable(b)
        self.assertEqual(x | y, UIDSet.from_iterable(a | b))
        self.assertEqual(x.union(y), UIDSet.from_iterable(a | b))
        self.assertEqual(x & y, UIDSet.from_iterable(a & b))
        self.assertEqual(x.intersection(y), UIDSet.from_iterable(a & b))
        self.assertEqual(x - y, UIDSet.from_iterable(a - b))
        self.assertEqual(x.difference(y), UIDSet.from_iterable(a - b))

    @given(st.lists(narrow_ranges, max_size=6), st.lists(narrow_ranges, max_size=6))
    def test_operations_on_ranges(
        self, a: List[Tuple[int, int]], b: List[Tuple[int, int]]
    ) -> None:
        x, y = UIDSet.from_ranges(a), UIDSet.from_ranges(b)
        sa, sb = expand(a), expand(b)
        self.assertEqual(frozenset(x | y), sa | sb)
        self.assertEqual(frozenset(x & y), sa & sb)
        self.assertEqual(frozenset(x - y), sa - sb)

    def test_operators_reject_other_types(self) -> None:
        s = UIDSet.parse(b"1")
        for op in (s.__or__, s.__and__, s.__sub__):
            self.assertIs(op({1}), NotImplemented)  # type: ignore[arg-type]


class ChunksTests(SynchronousTestCase):
    @given(uid_sets, st.integers(21, 120))
    def test_chunks(self, members: FrozenSet[int], max_bytes: int) -> None:
        s = UIDSet.from_iterable(members)
        chunks = list(s.chunks(max_bytes))
        seen: List[int] = []
        for chunk in chunks:
            self.assertTrue(chunk)
            self.assertLessEqual(len(chunk.to_bytes()), max_bytes)
            seen.extend(chunk)
        # Disjoint, ascending, and together the whole set.
        self.assertEqual(seen, list(s))

    def test_chunks_are_filled(self) -> None:
        s = UIDSet.from_iterable(range(1, 200, 2))
        chunks = [c.to_bytes() for c in s.chunks(30)]
        self.assertEqual(chunks[0], b"1,3,5,7,9,11,13,15,17,19,21,23")  # 30 bytes
        self.assertEqual(b",".join(chunks), s.to_bytes())

    def test_too_small(self) -> None:
        self.assertRaises(ValueError, list, UIDSet.parse(b"1").chunks(20))


class ParseUIDListTests(SynchronousTestCase):
    def test_order_kept(self) -> None:
        self.assertEqual(parse_uid_list(b"7,9:10"), (7, 9, 10))
        self.assertEqual(parse_uid_list(b"10,3:1,4"), (10, 1, 2, 3, 4))
        self.assertEqual(parse_uid_list(b"5,5"), (5, 5))

    def test_invalid(self) -> None:
        for data in [b"", b"0", b"1,,2", b"a", b"1:*"]:
            with self.subTest(data=data):
                self.assertRaises(ProtocolError, parse_uid_list, data)

    def test_max_count(self) -> None:
        self.assertEqual(len(parse_uid_list(b"1:10", max_count=10)), 10)
        self.assertRaises(ProtocolError, parse_uid_list, b"1:11", max_count=10)
        self.assertRaises(ProtocolError, parse_uid_list, b"1:4294967295")

    @given(st.lists(narrow_ranges, min_size=1, max_size=8))
    def test_expansion(self, pairs: List[Tuple[int, int]]) -> None:
        text = b",".join(b"%d:%d" % pair for pair in pairs)
        expected: List[int] = []
        for a, b in pairs:
            expected.extend(range(min(a, b), max(a, b) + 1))
        self.assertEqual(parse_uid_list(text), tuple(expected))
