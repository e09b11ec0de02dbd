#!/usr/bin/env bash
# Validates the Kubernetes manifests (docker/kubernetes) without a cluster: every resource the
# kustomization lists against the Kubernetes API schemas, strictly (kubernetes-validate, PyPI,
# schemas bundled), and the lot with a static analyser of manifests (checkov, PyPI: security
# context, probes, resources, image pinning, network policy). Installs both when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=docker/kubernetes
venv=target/tools/kubernetes
if ! "$venv/bin/python" -c 'import kubernetes_validate, checkov' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'checkov==3.3.30'
fi

# Every manifest is in the kustomization, and everything it lists exists.
listed=$(sed -n '/^resources:/,/^[a-z]/s/^  - //p' "$dir/kustomization.yaml" | sort)
present=$(cd "$dir" && ls ./*.yaml | sed 's|^\./||' | grep -v '^kustomization.yaml$' | sort)
if [ "$listed" != "$present" ]; then
    echo "check-kubernetes: $dir/kustomization.yaml lists:" $listed "but the folder holds:" $present >&2
    exit 1
fi
# The oldest Kubernetes still supported upstream and the newest the validator knows.
for version in 1.32.0 1.37.0; do
    (cd "$dir" && "../../$venv/bin/kubernetes-validate" --strict --quiet -k "$version" $listed)
done
echo "check-kubernetes: kubernetes-validate --strict $dir: ok"
"$venv/bin/checkov" --directory "$dir" --framework kubernetes --quiet --compact --skip-download
echo "check-kubernetes: checkov $dir: ok"
