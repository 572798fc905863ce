"""`make demo`: two throwaway Dovecot stores kept in sync by the real command."""
