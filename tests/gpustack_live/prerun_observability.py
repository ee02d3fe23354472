"""Runs GPUStack 2.3.0's own prerun step for the built-in Prometheus and Grafana (run by GPUStack's
Python: tests/test_gpustack_observability.py), twice, the way a container restart does.

    prerun_observability.py OUT [EXTRA_PROVISIONING_DIR]

First start: prepare_observability_config writes OUT/first/prometheus.yml and the Grafana provisioning
under OUT/provisioning. Then EXTRA_PROVISIONING_DIR's files are copied in beside GPUStack's (what a user
mounts there), GPUStack's datasource file is tampered with, and the second start runs the same code.
OUT/second/prometheus.yml and OUT/provisioning then show what survives a restart.
"""

import os
import shutil
import sys
from pathlib import Path

out = Path(sys.argv[1])
extra = Path(sys.argv[2]) if len(sys.argv) > 2 else None
provisioning = out / "provisioning"
# The paths prerun.py reads from the environment (PROMETHEUS_CONFIG_FILE, GF_PATHS_PROVISIONING,
# GPUSTACK_OBSERVABILITY_CONFIG), here in a scratch directory instead of /etc.
os.environ["GF_PATHS_PROVISIONING"] = str(provisioning)
os.environ["GPUSTACK_OBSERVABILITY_CONFIG"] = str(out / "observability.env")

from gpustack.cmd import prerun  # noqa: E402
from gpustack.config.config import Config  # noqa: E402

# A server with the default ports (metrics 10161, built-in Prometheus 19090, Grafana 13000).
cfg = Config(data_dir=str(out / "data"), database_url="postgresql://gpustack@127.0.0.1:5432/gpustack")
assert prerun.use_builtin_grafana(cfg), "built-in observability is off in this configuration"

for start in ("first", "second"):
    (out / start).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_CONFIG_FILE"] = str(out / start / "prometheus.yml")
    prerun.prepare_observability_config(cfg)
    if start == "first":
        if extra is not None:
            shutil.copytree(extra, provisioning, dirs_exist_ok=True)
        datasource = provisioning / "datasources" / "datasource.yaml"
        datasource.write_text(datasource.read_text() + "# edited by hand\n")
