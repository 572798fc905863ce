# -*- test-case-name: tests.test_demo -*-
"""Deterministic, realistic mail for the demo: people, topics, flags, dates.

Every message is built from a seeded random generator, so two runs of the
demo seed byte-identical stores.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import textwrap
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Dict, List, Optional, Sequence, Tuple

import attrs

#: A mailbox as its hierarchy levels: each store joins them with its separator.
Path = Tuple[str, ...]

ME = "Robin Meyer <robin@example.org>"

PEOPLE = (
    "Zoë Lefèvre <zoe.lefevre@example.com>",
    "Jürgen Müller <j.mueller@example.net>",
    "Ana Sofía Pérez <anasofia@example.com>",
    "Chidi Okafor <chidi@example.org>",
    "Mei Tanaka <mei.tanaka@example.jp>",
    "Priya Raman <priya@example.in>",
    "Tomás Ó Briain <tomas@example.ie>",
    "Lars Håkansson <lars@example.se>",
    "Fatima Zahra Bennani <fz.bennani@example.ma>",
    "Oliver Smith <oliver.smith@example.co.uk>",
)
COLLEAGUES = (
    "Dana Whitfield <dana@corp.example.com>",
    "Hugo Martins <hugo@corp.example.com>",
    "Ines Kowalczyk <ines@corp.example.com>",
    "Sam Adeyemi <sam@corp.example.com>",
)
LIST_MEMBERS = (
    "Glyph <glyph@twistedmatrix.example.com>",
    "Adi Roiban <adi@lists.example.org>",
    "Jean-Paul Calderone <exarkun@lists.example.org>",
    "Tom Most <twm@lists.example.org>",
    "Wilfredo Sánchez <wsanchez@lists.example.org>",
    "Amber Brown <hawkowl@lists.example.org>",
)
SHOPS = (
    "Bücherwurm Online <orders@buecherwurm.example.de>",
    "Nordic Rail <tickets@nordicrail.example.se>",
    "Café Lumière <bonjour@cafe-lumiere.example.fr>",
    "Pixel Hardware <no-reply@pixelhw.example.com>",
)

INBOX_SUBJECTS = (
    "Lunch on Thursday?",
    "Photos from the weekend",
    "Flat viewing on Saturday",
    "Dentist appointment reminder",
    "Book club: next month's pick",
    "Can you review my CV?",
    "Bike for sale — still available?",
    "Dinner at ours on the 14th",
    "Recipe you asked for",
    "Marathon training plan",
    "Quick question about the router",
    "Garden party — RSVP",
)
ALPHA_SUBJECTS = (
    "[Alpha] Milestone {n} review notes",
    "[Alpha] API freeze date",
    "[Alpha] Load test results, run {n}",
    "[Alpha] Staging deploy failed",
    "[Alpha] Design doc: sync protocol v{n}",
    "[Alpha] Retro action items",
    "[Alpha] Customer feedback from pilot {n}",
)
REPORT_SUBJECTS = (
    "Weekly report — week {n}",
    "Monthly KPI report — {month}",
    "Incident report INC-{n:04d}",
    "Quarterly budget review — Q{q}",
)
TWISTED_SUBJECTS = (
    "[Twisted] Deferred.fromCoroutine and cancellation",
    "[Twisted] trial --jobs hangs on macOS",
    "[Twisted] ANN: Twisted 24.{n}.0 released",
    "[Twisted] Type hints for IProtocol",
    "[Twisted] Dropping Python 3.{n} support",
    "[Twisted] HostnameEndpoint and happy eyeballs",
    "[Twisted] Porting a LineReceiver to asyncio?",
    "[Twisted] Code review sprint this weekend",
)
ARCHIVE_SUBJECTS = (
    "Tax documents 2025",
    "Invoice #{n} from Pixel Hardware",
    "Holiday plans for August",
    "Your train tickets to Malmö",
    "Insurance renewal 2025",
    "Wedding invitation — save the date",
    "Electricity bill, {month}",
)
RECEIPT_SUBJECTS = (
    "Your receipt from Café Lumière",
    "Order #{n} confirmed",
    "Ticket confirmation: Stockholm → Göteborg",
    "Thanks for your purchase at Bücherwurm",
)

SENTENCES = (
    "I had a look at this over the weekend and I think we are nearly there.",
    "Could you send me the latest version before Friday?",
    "The numbers look better than last month, mostly thanks to the new cache.",
    "Let me know if the time works for you, otherwise we can move it.",
    "I attached the file; the second sheet has the raw data.",
    "We should probably keep the old behaviour behind a flag for one release.",
    "Thanks again for your help, it saved me a lot of time.",
    "The meeting room is booked from ten to eleven.",
    "I'm not sure the timeout is the culprit, the logs show a reset first.",
    "Nothing urgent, just wanted to keep you in the loop.",
    "Do you remember who had the spare key?",
    "The tests pass locally but CI keeps failing on the slow runner.",
    "I'll bring the cake, you bring the candles.",
    "Bottom line: ship it, then watch the error rate for a day.",
)
UTF8_SENTENCES = (
    "Grüße aus München, und danke für die schnelle Antwort!",
    "Merci beaucoup pour ton aide — c'était très utile.",
    "¿Nos vemos el sábado en la cafetería de siempre?",
    "よろしくお願いします。",
    "Vi ses på fredag, hälsningar från Malmö.",
    "The café's crème brûlée costs 7,50 € now — outrageous.",
    "Naïve question, perhaps: why not cache the résumé token?",
)
SIGNATURES = ("Cheers", "Best", "Thanks", "Talk soon", "Regards", "À bientôt")

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
CEST = datetime.timezone(datetime.timedelta(hours=2))


@attrs.frozen
class Mail:
    """One message to APPEND: its bytes, flags and INTERNALDATE."""

    raw: bytes
    flags: Tuple[str, ...]
    date: datetime.datetime

    def append_item(self) -> Tuple[bytes, Tuple[str, ...], datetime.datetime]:
        return (self.raw, self.flags, self.date)


@attrs.define
class Corpus:
    """Makes messages from one seeded generator: same seed, same bytes."""

    seed: int = 2025
    rng: random.Random = attrs.field(init=False)
    serial: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- the seeded stores ------------------------------------------------

    def local_mailboxes(self) -> Dict[Path, List[Mail]]:
        """What the local store holds before the first sync (a few hundred)."""
        start = datetime.datetime(2026, 3, 1, 8, 0, tzinfo=CEST)
        archive = datetime.datetime(2025, 1, 6, 8, 0, tzinfo=CEST)
        return {
            ("INBOX",): self.messages("inbox", 90, start),
            ("Work", "Projects", "Alpha"): self.messages("alpha", 45, start),
            ("Work", "Reports"): self.messages("report", 30, start),
            ("Lists", "twisted"): self.messages("twisted", 80, start),
            ("Archive", "2025"): self.messages("archive", 60, archive, gap=15000),
            ("Sent",): self.messages("sent", 25, start),
        }

    def remote_mailboxes(self) -> Dict[Path, List[Mail]]:
        """What only the remote store holds before the first sync."""
        start = datetime.datetime(2026, 9, 1, 9, 0, tzinfo=CEST)
        return {
            ("INBOX",): self.messages("inbox", 4, start, unread=True),
            ("Receipts",): self.messages("receipt", 8, start),
        }

    # -- messages ---------------------------------------------------------

    def messages(
        self,
        kind: str,
        count: int,
        start: datetime.datetime,
        *,
        unread: bool = False,
        gap: int = 900,
    ) -> List[Mail]:
        """``count`` messages of one kind, dated in order from ``start``,
        up to ``gap`` minutes apart."""
        mails = []
        date = start
        for _ in range(count):
            date += datetime.timedelta(minutes=self.rng.randint(20, gap))
            if not 7 <= date.hour < 22:  # people sleep: on to the next morning
                date = date.replace(hour=7) + datetime.timedelta(days=date.hour >= 22)
            mails.append(self.message(kind, date, unread=unread))
        return mails

    def message(self, kind: str, date: datetime.datetime, *, unread: bool = False) -> Mail:
        rng = self.rng
        self.serial += 1
        n = rng.randint(1, 60)
        subject = rng.choice(_subjects(kind)).format(
            n=n, q=rng.randint(1, 4), month=MONTHS[(date.month - 2) % 12]
        )
        if kind in ("inbox", "alpha", "twisted", "sent") and rng.random() < 0.35:
            subject = "Re: " + subject
        sender, to = _correspondents(kind, rng)
        msg = EmailMessage(policy=SMTP)
        msg["From"] = sender
        msg["To"] = to
        if kind == "alpha" and rng.random() < 0.5:
            msg["Cc"] = ", ".join(rng.sample(COLLEAGUES, 2))
        msg["Subject"] = subject
        msg["Date"] = format_datetime(date)
        domain = sender.rpartition("@")[2].rstrip(">")
        msg["Message-ID"] = f"<{date:%Y%m%d%H%M}.{self.serial}.demo@{domain}>"
        if kind == "twisted":
            msg["List-Id"] = "Twisted general discussion <twisted.lists.example.org>"
        text = _body(kind, sender, to, subject, date, rng)
        # Most non-ASCII text goes as raw 8-bit UTF-8, some quoted-printable.
        if text.isascii():
            msg.set_content(text, cte="7bit")
        else:
            msg.set_content(text, cte="8bit" if rng.random() < 0.75 else "quoted-printable")
        attachment = _attachment(kind, self.serial, rng)
        if attachment is not None:
            data, maintype, subtype, filename = attachment
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
            # The generator would draw a random boundary: fix it.
            msg.set_boundary(f"=_demo_{hashlib.sha1(data).hexdigest()[:16]}")
        return Mail(msg.as_bytes(), _flags(kind, subject, unread, rng), date)


def _subjects(kind: str) -> Sequence[str]:
    return {
        "inbox": INBOX_SUBJECTS,
        "alpha": ALPHA_SUBJECTS,
        "report": REPORT_SUBJECTS,
        "twisted": TWISTED_SUBJECTS,
        "archive": ARCHIVE_SUBJECTS,
        "sent": INBOX_SUBJECTS + ALPHA_SUBJECTS,
        "receipt": RECEIPT_SUBJECTS,
    }[kind]


def _correspondents(kind: str, rng: random.Random) -> Tuple[str, str]:
    if kind == "sent":
        return ME, rng.choice(PEOPLE + COLLEAGUES)
    if kind in ("alpha", "report"):
        return rng.choice(COLLEAGUES), ME
    if kind == "twisted":
        return rng.choice(LIST_MEMBERS), "Twisted general discussion <twisted@lists.example.org>"
    if kind == "receipt" or (kind == "archive" and rng.random() < 0.4):
        return rng.choice(SHOPS), ME
    return rng.choice(PEOPLE), ME


def _body(
    kind: str, sender: str, to: str, subject: str, date: datetime.datetime, rng: random.Random
) -> str:
    greeting = "Hi all," if kind == "twisted" else f"Hi {_first_name(to)},"
    paragraphs = []
    for _ in range(rng.randint(1, 4)):
        sentences = rng.sample(SENTENCES, rng.randint(2, 4))
        if rng.random() < 0.25:
            sentences.append(rng.choice(UTF8_SENTENCES))
        paragraphs.append(textwrap.fill(" ".join(sentences), 72))
    signature = f"{rng.choice(SIGNATURES)},\n{_first_name(sender)}"
    text = "\n\n".join([greeting, *paragraphs, signature])
    if subject.startswith("Re: "):
        earlier = date - datetime.timedelta(hours=rng.randint(3, 50))
        quoted = textwrap.fill(" ".join(rng.sample(SENTENCES, 3)), 70)
        text += f"\n\nOn {format_datetime(earlier)}, {to} wrote:\n"
        text += textwrap.indent(quoted, "> ")
    if kind == "twisted":
        text += (
            "\n\n_______________________________________________\n"
            "Twisted mailing list -- twisted@lists.example.org\n"
            "To unsubscribe send an email to twisted-leave@lists.example.org"
        )
    return text + "\n"


def _first_name(address: str) -> str:
    return address.split("<")[0].split()[0]


def _attachment(
    kind: str, serial: int, rng: random.Random
) -> Optional[Tuple[bytes, str, str, str]]:
    if kind == "report" and rng.random() < 0.6:
        rows = ["region,orders,revenue_eur"] + [
            f"{region},{rng.randint(80, 900)},{rng.randint(2000, 90000)}"
            for region in ("north", "south", "east", "west")
        ]
        return ("\r\n".join(rows) + "\r\n").encode(), "text", "csv", f"report-{serial}.csv"
    if kind in ("archive", "receipt") and rng.random() < 0.3:
        pdf = b"%PDF-1.4\n% demo invoice " + str(serial).encode() + b"\n" + rng.randbytes(600)
        return pdf, "application", "pdf", f"invoice-{serial}.pdf"
    if kind == "inbox" and rng.random() < 0.06:
        png = b"\x89PNG\r\n\x1a\n" + rng.randbytes(900)
        return png, "image", "png", f"IMG_{4000 + serial}.png"
    return None


def _flags(kind: str, subject: str, unread: bool, rng: random.Random) -> Tuple[str, ...]:
    if unread:
        return ()
    flags = []
    if kind == "sent" or rng.random() < 0.85:
        flags.append("\\Seen")
    if kind != "sent" and "\\Seen" in flags and rng.random() < 0.15:
        flags.append("\\Answered")
    if rng.random() < 0.06:
        flags.append("\\Flagged")
    if kind in ("alpha", "report") and rng.random() < 0.2:
        flags.append("$Label1")  # "Important" in Thunderbird
    if kind == "archive" and rng.random() < 0.1:
        flags.append("$Forwarded")
    if kind == "inbox" and "Re: " in subject and rng.random() < 0.3:
        flags.append("$Label4")  # "To Do"
    return tuple(flags)
