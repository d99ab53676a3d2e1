#!/usr/bin/env bash
# Runs the chart tests: Helm render + strict lint, Kubernetes schema
# validation, values schema, deploy/ freshness, sidecar kustomization and the
# Dockerfile checks. Last line: "chart: N passed, M failed" (skips count as
# failures). Exit status non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! tests/chart/setup.sh; then
    echo "chart: 0 passed, 1 failed"
    exit 1
fi
export PYTHONDONTWRITEBYTECODE=1
XML=target/chart-junit.xml
rm -f "$XML"
target/chart-venv/bin/python -m pytest -q -p no:cacheprovider --junitxml="$XML" \
    --rootdir=tests/chart tests/chart "$@"
rc=$?
target/chart-venv/bin/python - "$XML" "$rc" <<'PY'
import sys
import xml.etree.ElementTree as ET
xml, rc = sys.argv[1], int(sys.argv[2])
try:
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    bad = sum(int(s.get(k, 0)) for s in suites for k in ("failures", "errors", "skipped"))
except Exception:
    tests, bad = 0, 0
if rc != 0 and bad == 0:
    bad = 1  # a collection or usage error
print("chart: %d passed, %d failed" % (tests - min(bad, tests), bad))
sys.exit(1 if bad or rc else 0)
PY
