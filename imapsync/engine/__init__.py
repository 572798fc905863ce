"""The synchronization engine: mailbox lists, per-mailbox QRESYNC sync, commands.

It talks to servers only through `imapsync.interfaces.IIMAPSession` and to
the database only through `imapsync.state.StateStore`.
"""
