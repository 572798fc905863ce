# -*- test-case-name: tests.test_imap_utf7 -*-
"""Tests for imapsync.imap.utf7."""

from __future__ import annotations

from typing import List

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imapsync.imap.utf7 import MailboxNameError, decode_mailbox, encode_mailbox

# Pieces that assemble into valid and almost-valid names far more often than
# random bytes do.
wire_pieces = st.sampled_from(
    [b"&", b"-", b"&-", b"A", b"O", b"k", b",", b"+", b"/", b"=", b"a", b" ", b"~"]
    + [b"&AOk-", b"&AOkA6Q-", b"&2D3eAA-", b"&ZeVnLIqe-", b"&AAk-", b"&2AA-", b"\xc3\xa9"]
)


class KnownNamesTests(SynchronousTestCase):
    VECTORS = [
        ("INBOX", b"INBOX"),
        ("", b""),
        ("&", b"&-"),
        ("a&b&&", b"a&-b&-&-"),
        ("Entwürfe", b"Entw&APw-rfe"),
        # RFC 3501 section 5.1.3.
        ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("é&é", b"&AOk-&-&AOk-"),
        ("éé", b"&AOkA6Q-"),
        ("\U0001f600", b"&2D3eAA-"),
        ("tab\there", b"tab&AAk-here"),
        ("\x7f", b"&AH8-"),
    ]

    def test_encode(self) -> None:
        for text, wire in self.VECTORS:
            with self.subTest(text=text):
                self.assertEqual(encode_mailbox(text), wire)

    def test_decode(self) -> None:
        for text, wire in self.VECTORS:
            with self.subTest(wire=wire):
                self.assertEqual(decode_mailbox(wire), text)


class StrictnessTests(SynchronousTestCase):
    def test_rejections(self) -> None:
        for wire in [
            b"caf\xc3\xa9",  # raw UTF-8
            b"a\tb",  # control character sent as itself
            b"a\x7fb",
            b"&",  # unterminated shift
            b"&AOk",
            b"&AOk-&AOk-",  # two sections in a row: the encoder makes one
            b"&AGE-",  # "a" shifted: printable ASCII must be sent as itself
            b"&ACY-",  # "&" shifted instead of "&-"
            b"&AOkAYQ-",  # "éa" with the "a" shifted
            b"&AOl-",  # non-zero padding bits
            b"&AO-",  # an odd byte
            b"&A-",  # not even one byte
            b"&AOk,-",  # a superfluous character
            b"&AOk=-",  # padding is not part of modified BASE64
            b"&AO/-",  # "/" instead of ","
            b"&2AA-",  # a lone high surrogate
            b"&3AA-",  # a lone low surrogate
            b"&2D3YPQ-",  # high surrogate followed by high surrogate
            b"&*-",
        ]:
            with self.subTest(wire=wire):
                self.assertRaises(MailboxNameError, decode_mailbox, wire)

    def test_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(MailboxNameError, ValueError))

    def test_encode_lone_surrogate(self) -> None:
        self.assertRaises(MailboxNameError, encode_mailbox, "a\ud800b")


class RoundTripTests(SynchronousTestCase):
    @given(st.text())
    @example("&&é-&AOk-")
    def test_text_round_trip(self, text: str) -> None:
        wire = encode_mailbox(text)
        # Always printable ASCII.
        self.assertTrue(all(0x20 <= byte <= 0x7E for byte in wire))
        self.assertEqual(decode_mailbox(wire), text)

    @given(st.binary())
    def test_accepted_bytes_are_canonical(self, wire: bytes) -> None:
        self._check_canonical(wire)

    @given(st.lists(wire_pieces))
    def test_accepted_pieces_are_canonical(self, pieces: List[bytes]) -> None:
        self._check_canonical(b"".join(pieces))

    def _check_canonical(self, wire: bytes) -> None:
        try:
            text = decode_mailbox(wire)
        except MailboxNameError:
            return
        self.assertEqual(encode_mailbox(text), wire)
