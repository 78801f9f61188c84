"""``python -m tenant_pipelines.cli``: the same as the ``tenant-pipelines`` command."""

import sys

from tenant_pipelines.cli import main

sys.exit(main())
