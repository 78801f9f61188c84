"""The code location: one Definitions, loaded from the domain folders under defs/ and bound to
the resources.

Every asset, check, job, sensor and schedule defined at module level in a file under
tenant_pipelines/defs/ is found by Dagster's defs-folder loading (``[tool.dg.project]`` in
pyproject.toml names the defs module); nothing is listed here by hand.
"""

import warnings
from pathlib import Path

import dagster as dg

# backfill_policy is marked beta; the behaviour we rely on (batches of partitions per run) is tested.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
# partitions_def on an asset check is marked preview; the per-tenant check results it gives are tested.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from tenant_pipelines.defs.resources import BackupStorage, BillingDatabase, ClusterBackups  # noqa: E402

MAIN_JOB = "rollup_tenant_metrics"

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(resources={"billing_db": BillingDatabase(), "backup_storage": BackupStorage(),
                           "cluster_backups": ClusterBackups()}),
)
