#!/usr/bin/env bash
# Regenerates deploy/ from charts/csi-fencer with a real Helm engine.
# --check: exit 1 if deploy/ is not what the chart renders.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/chart/setup.sh
export PYTHONDONTWRITEBYTECODE=1
exec target/chart-venv/bin/python tests/chart/render_deploy.py "$@"
