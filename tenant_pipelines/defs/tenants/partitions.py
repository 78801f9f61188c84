import dagster as dg

# One partition per organization, keyed by its UUID string (no ',' or '|' can occur).
tenants_partitions = dg.DynamicPartitionsDefinition(name="tenants")
