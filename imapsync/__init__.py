"""imapsync: stateful two-way synchronization of two IMAP servers (QRESYNC)."""

__version__ = "0.1.0.dev0"
