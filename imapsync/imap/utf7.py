# -*- test-case-name: tests.test_imap_utf7 -*-
"""Strict modified UTF-7 (RFC 3501 section 5.1.3), the wire form of mailbox names.

Names stay wire bytes everywhere; this codec is for display and for names
given by the user.  Decoding accepts only the canonical form, so that
``encode_mailbox(decode_mailbox(x)) == x`` for every accepted ``x``: two
spellings of one name would otherwise map to one displayed name.
"""

from __future__ import annotations

import binascii
import re
from typing import List

__all__ = ["MailboxNameError", "decode_mailbox", "encode_mailbox"]


class MailboxNameError(ValueError):
    """A mailbox name that is not canonical modified UTF-7 (or cannot be encoded)."""


# Printable US-ASCII represents itself, "&" excepted.
_DIRECT = re.compile(r"[\x20-\x25\x27-\x7e]+")
# One token of the wire form: a run of direct bytes, "&-", or a shifted section.
_TOKEN = re.compile(rb"([\x20-\x25\x27-\x7e]+)|&-|&([A-Za-z0-9+,]+)-")


def _b64encode(data: bytes) -> bytes:
    """Modified BASE64: "," for "/", no padding."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").replace(b"/", b",")


def encode_mailbox(name: str) -> bytes:
    """Encode a mailbox name; MailboxNameError for a lone surrogate."""
    out: List[bytes] = []
    pos = 0
    while pos < len(name):
        match = _DIRECT.match(name, pos)
        if match is not None:
            out.append(match.group().encode("ascii"))
            pos = match.end()
        elif name[pos] == "&":
            out.append(b"&-")
            pos += 1
        else:
            # Everything up to the next printable ASCII character goes in one
            # section: a decoder refuses two sections in a row.
            end = pos + 1
            while end < len(name) and not ("\x20" <= name[end] <= "\x7e"):
                end += 1
            try:
                utf16 = name[pos:end].encode("utf-16-be")
            except UnicodeEncodeError as e:
                raise MailboxNameError(f"cannot encode mailbox name {name!r}: {e}") from e
            out.append(b"&" + _b64encode(utf16) + b"-")
            pos = end
    return b"".join(out)


def decode_mailbox(data: bytes) -> str:
    """Decode a wire mailbox name; MailboxNameError unless it is canonical.

    Refused: bytes outside printable ASCII, "&" without a closing "-",
    invalid or non-minimal BASE64 (wrong length, non-zero padding bits),
    unpaired surrogates, characters that must be sent as themselves, and two
    shifted sections in a row (the encoder makes one of them).
    """
    out: List[str] = []
    pos = 0
    previous_shifted = False
    while pos < len(data):
        match = _TOKEN.match(data, pos)
        if match is None:
            raise MailboxNameError(f"invalid modified UTF-7 at offset {pos} in {data!r}")
        direct, encoded = match.groups()
        pos = match.end()
        if direct is not None:
            out.append(direct.decode("ascii"))
            previous_shifted = False
        elif encoded is None:
            out.append("&")
            previous_shifted = False
        else:
            if previous_shifted:
                raise MailboxNameError(f"two shifted sections in a row in {data!r}")
            out.append(_decode_section(encoded, data))
            previous_shifted = True
    return "".join(out)


def _decode_section(encoded: bytes, data: bytes) -> str:
    # Whole UTF-16 code units take 8 * 2n bits; 6-bit characters cover them
    # with fewer than 6 bits left over, which must be zero.  Re-encoding and
    # comparing checks length and padding bits at once.
    padded = encoded.replace(b",", b"/") + b"=" * (-len(encoded) % 4)
    try:
        utf16 = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as e:
        raise MailboxNameError(f"invalid BASE64 in {data!r}: {e}") from e
    if len(utf16) % 2 or _b64encode(utf16) != encoded:
        raise MailboxNameError(f"non-canonical BASE64 section &{encoded.decode()}- in {data!r}")
    try:
        text = utf16.decode("utf-16-be")
    except UnicodeDecodeError as e:
        raise MailboxNameError(f"invalid UTF-16 in {data!r}: {e}") from e
    if any("\x20" <= char <= "\x7e" for char in text):
        raise MailboxNameError(f"printable ASCII shifted into BASE64 in {data!r}")
    return text
