"""tenant-pipelines: the multi-tenant storage layer of a billing platform, driven from Dagster."""

__version__ = "0.1.0"
