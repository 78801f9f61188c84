"""Storage operations as plain functions over a psycopg connection. Nothing here imports Dagster."""
