#!/usr/bin/env bash
# Creates (once) the Python virtualenv the chart tests run in:
# target/chart-venv with pinned helm-python-sdk (a real Helm v4 engine as a
# shared library, no helm binary needed), kubernetes-validate (the Kubernetes
# OpenAPI schemas, offline), PyYAML, jsonschema and pytest.
# Idempotent: a stamp file holding the requirement list makes a second run a
# no-op (well under a second). Delete target/chart-venv to start over.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=target/chart-venv
STAMP="$VENV/.chart-requirements"
REQS="helm-python-sdk==0.2.2
kubernetes-validate==1.37.0
PyYAML==6.0.2
jsonschema==4.23.0
pytest==8.3.4"

# `kubectl kustomize deploy/sidecar` is part of the tests: Debian's
# kubernetes-client (kubectl 1.20, kustomize inside) when no kubectl is present.
if ! command -v kubectl >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y kubernetes-client
    else
        echo "setup.sh: kubectl missing: install kubernetes-client (or any kubectl)" >&2
        exit 1
    fi
fi

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQS" ]; then
    exit 0
fi

mkdir -p target
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y python3-venv
    else
        echo "setup.sh: python3 venv/ensurepip missing: install python3-venv" >&2
        exit 1
    fi
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
printf '%s\n' "$REQS" > "$VENV/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$VENV/requirements.txt"
printf '%s' "$REQS" > "$STAMP"
echo "setup.sh: $VENV ready"
