"""Names the SQL in sql/ creates and the Python side refers to: the roles."""

from __future__ import annotations

# Applications log in as this role: NOSUPERUSER, NOBYPASSRLS, no owner of anything, no TEMPORARY.
APP_ROLE = "billing_app"
# Owns the tables and functions; never logs in (sql/migrations/0001).
OWNER_ROLE = "billing_owner"
