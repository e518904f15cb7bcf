#!/usr/bin/env bash
# The README's main command: set up the environment, then train MOTIF on the tiny offline model
# against a slice of GSM8K on a local Ray. Extra arguments are config overrides (e.g. steps=8).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/cluster/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${MOTIF_VENV:-$root/.venv}/bin/motif" train --config cluster/configs/demo.yaml "$@"
