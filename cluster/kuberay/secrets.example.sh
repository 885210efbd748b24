#!/usr/bin/env bash
# The Secrets that raycluster.yaml refers to, made from your environment.
# Values are never written into a manifest or a file: each is handed to kubectl
# through a pipe (process substitution), so it shows in no command line either
# (printf is a shell builtin).
#
#   export MLFLOW_TRACKING_USERNAME=tvp MLFLOW_TRACKING_PASSWORD=...    # tvp's user on the MLflow server
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...                # object storage for shards
#   export AWS_ENDPOINT_URL=http://minio.mlflow.svc.cluster.local:9000   # optional: MinIO or another S3-compatible store
#   export AWS_DEFAULT_REGION=us-east-1                                   # optional
#   NAMESPACE=tvp bash cluster/kuberay/secrets.example.sh
#
# The Ray token is generated here (once) unless RAY_AUTH_TOKEN is set. Read it
# back to submit jobs from a laptop:
#   export RAY_AUTH_MODE=token
#   export RAY_AUTH_TOKEN="$(kubectl -n tvp get secret tvp-ray-token -o jsonpath='{.data.auth_token}' | base64 -d)"
set -euo pipefail
namespace="${NAMESPACE:-tvp}"
: "${MLFLOW_TRACKING_USERNAME:?set it to tvp's MLflow user}"
: "${MLFLOW_TRACKING_PASSWORD:?set it to that user's password}"
: "${AWS_ACCESS_KEY_ID:?set it to the object store's access key id}"
: "${AWS_SECRET_ACCESS_KEY:?set it to the object store's secret key}"

# create, or replace the values of, one generic Secret
apply_secret() {
  kubectl -n "$namespace" create secret generic "$@" --dry-run=client -o yaml | kubectl -n "$namespace" apply -f -
}

# Ray token authentication (KubeRay authOptions.secretName; the key must be auth_token).
# An existing token is kept unless RAY_AUTH_TOKEN names a new one: running Ray pods hold
# the old value and would refuse submitters that carry a new one until they restart.
if [[ -z "${RAY_AUTH_TOKEN:-}" ]] && kubectl -n "$namespace" get secret tvp-ray-token >/dev/null 2>&1; then
  echo "secret/tvp-ray-token exists: kept"
else
  ray_token="${RAY_AUTH_TOKEN:-$(openssl rand -hex 32)}"
  apply_secret tvp-ray-token --from-file=auth_token=<(printf %s "$ray_token")
fi

apply_secret tvp-mlflow-client --from-env-file=<(
  printf 'username=%s\n' "$MLFLOW_TRACKING_USERNAME"
  printf 'password=%s\n' "$MLFLOW_TRACKING_PASSWORD"
)

apply_secret tvp-object-store --from-env-file=<(
  printf 'access_key_id=%s\n' "$AWS_ACCESS_KEY_ID"
  printf 'secret_access_key=%s\n' "$AWS_SECRET_ACCESS_KEY"
  if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then printf 'endpoint_url=%s\n' "$AWS_ENDPOINT_URL"; fi
  if [[ -n "${AWS_DEFAULT_REGION:-}" ]]; then printf 'region=%s\n' "$AWS_DEFAULT_REGION"; fi
)
