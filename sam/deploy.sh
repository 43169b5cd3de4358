#!/usr/bin/env bash
# Deploy the already built stack (.aws-sam/build, from `make build`) to one samconfig
# environment. Used by the GitHub workflow and by hand:
#
#   SOURCE_SECRET_ARN=arn:... WAREHOUSE_SECRET_ARN=arn:... WAREHOUSE_OWNER_SECRET_ARN=arn:... \
#     sam/deploy.sh dev
#
# WAREHOUSE_SECRET_ARN is the loader's secret (no DDL rights), WAREHOUSE_OWNER_SECRET_ARN the
# owner's, read only by the stack's WarehouseMigration step (docs/deploy.md, Warehouse roles).
#
# Optional: ALARM_EMAIL, SUBNET_IDS and SECURITY_GROUP_IDS (comma-separated; both required for
# prod, which runs ingest and load in private subnets), KMS_KEY_ARN, BREAK_GLASS_ROLE_ARN, SAM
# (the sam binary, default .venv-sam/bin/sam). A --parameter-overrides on the command line
# replaces samconfig's list, so this passes the environment's list from samconfig.toml plus these.
set -euo pipefail
cd "$(dirname "$0")/.."
env_name="${1:?usage: sam/deploy.sh <default|dev|prod>}"
sam="${SAM:-.venv-sam/bin/sam}"
: "${SOURCE_SECRET_ARN:?SOURCE_SECRET_ARN is required}"
: "${WAREHOUSE_SECRET_ARN:?WAREHOUSE_SECRET_ARN is required}"
: "${WAREHOUSE_OWNER_SECRET_ARN:?WAREHOUSE_OWNER_SECRET_ARN is required}"
if [[ "$env_name" == prod ]]; then
  # The template refuses it too (RequireVpc=true in samconfig's prod): fail before packaging.
  : "${SUBNET_IDS:?SUBNET_IDS is required for prod (private subnets for ingest and load)}"
  : "${SECURITY_GROUP_IDS:?SECURITY_GROUP_IDS is required for prod}"
fi

overrides="$(python3 - "$env_name" <<'PY'
import sys
import tomllib

with open("samconfig.toml", "rb") as f:
    print(tomllib.load(f)[sys.argv[1]]["deploy"]["parameters"]["parameter_overrides"])
PY
)"

export SAM_CLI_TELEMETRY=0
"$sam" deploy --config-env "$env_name" --no-confirm-changeset --no-fail-on-empty-changeset \
  --parameter-overrides "$overrides" \
  "SourceSecretArn=\"${SOURCE_SECRET_ARN}\"" \
  "WarehouseSecretArn=\"${WAREHOUSE_SECRET_ARN}\"" \
  "WarehouseOwnerSecretArn=\"${WAREHOUSE_OWNER_SECRET_ARN}\"" \
  "AlarmEmail=\"${ALARM_EMAIL:-}\"" \
  "SubnetIds=\"${SUBNET_IDS:-}\"" \
  "SecurityGroupIds=\"${SECURITY_GROUP_IDS:-}\"" \
  "KmsKeyArn=\"${KMS_KEY_ARN:-}\"" \
  "BreakGlassRoleArn=\"${BREAK_GLASS_ROLE_ARN:-}\""
