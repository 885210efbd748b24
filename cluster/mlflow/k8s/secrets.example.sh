#!/usr/bin/env bash
# The Secrets that the MLflow server's manifests refer to. Passwords are
# generated here, once (a Secret that exists is kept: PostgreSQL and MinIO keep
# the password they started with); nothing is written to a file or a command
# line. Run after namespace.yaml:
#
#   bash cluster/mlflow/k8s/secrets.example.sh
#
# Read the admin password back when you need it:
#   kubectl -n mlflow get secret mlflow-admin -o jsonpath='{.data.password}' | base64 -d
set -euo pipefail
namespace=mlflow

# create one generic Secret from KEY=VALUE lines on standard input, unless it exists
create_once() {
  local name="$1"
  if kubectl -n "$namespace" get secret "$name" >/dev/null 2>&1; then
    echo "secret/$name exists: kept"
  else
    kubectl -n "$namespace" create secret generic "$name" --from-env-file=/dev/stdin
  fi
}

printf 'password=%s\n' "$(openssl rand -hex 24)" | create_once mlflow-db
printf 'password=%s\nflask_secret_key=%s\n' "$(openssl rand -hex 24)" "$(openssl rand -hex 32)" | create_once mlflow-admin
printf 'root_user=%s\nroot_password=%s\n' tvp-minio "$(openssl rand -hex 24)" | create_once mlflow-minio
