#!/bin/sh
# The compose stack's one-shot set-up, run once the Prefect API and the object store answer: the store's bucket,
# the work pool and the three deployments on it; then, unless a model is in production already, a first training
# run for the worker, so that the model server has something to serve. Every step is idempotent.
# LLMOPS_CONFIG: a pipeline config YAML (default: the built-in defaults), e.g. /configs/small-cpu.yaml.
set -eu
python - <<'PY'
from botocore.exceptions import ClientError

from llmops.infra.store import S3Store, open_store

store = open_store()
if isinstance(store, S3Store):
    try:
        store.client.head_bucket(Bucket=store.bucket)
    except ClientError:
        store.client.create_bucket(Bucket=store.bucket)
        print(f"created bucket {store.bucket}")
PY
prefect work-pool inspect "$LLMOPS_POOL" >/dev/null 2>&1 || prefect work-pool create "$LLMOPS_POOL" --type process
config=${LLMOPS_CONFIG:+--config $LLMOPS_CONFIG}
llmops deploy --pool "$LLMOPS_POOL" $config
if llmops models $config | grep -q production; then
  echo "a model is in production: no first training run"
else
  prefect deployment run training-pipeline/train
fi
