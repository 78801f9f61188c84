"""Connections, migrations, the tenant session and the embedded cluster."""
