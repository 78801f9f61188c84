"""The local development stack: the embedded PostgreSQL cluster, its PgBouncer, the demo data, dev keys.

Imported by the CLI and the tests only; never by core/ or defs/ (except defs/resources.py, the one
composition point that finds the embedded cluster when no DSN is configured)."""
