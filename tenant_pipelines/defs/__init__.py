"""The thin Dagster shell: assets, checks, sensors and schedules that call tenant_pipelines.core."""
