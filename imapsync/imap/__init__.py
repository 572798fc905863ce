"""The IMAP client: wire protocol, response parser, session API, TLS, connections.

This package knows nothing about synchronization.
"""
