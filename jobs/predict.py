#!/usr/bin/env python3
"""Ray job entrypoint, sharing the CLI's YAML job spec:

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/predict.py job.yaml [--option …]

Runs `tiler predict --config job.yaml --runner ray` on the cluster the job was submitted to (Ray sets
RAY_ADDRESS for the entrypoint). Inputs and outputs are paths or URIs that every node can reach.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's tiler

from tiler.cli import main  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: python jobs/predict.py JOB.yaml [tiler predict options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(["predict", "--config", sys.argv[1], "--runner", "ray", "--no-progress", *sys.argv[2:]]))
