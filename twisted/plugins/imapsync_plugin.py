"""twistd plugin: ``twistd imapsync -c config`` (the service lives in imapsync.tap)."""

from twisted.application.service import ServiceMaker

imapsync = ServiceMaker(
    "imapsync",
    "imapsync.tap",
    "Stateful two-way synchronization of two IMAP servers",
    "imapsync",
)
