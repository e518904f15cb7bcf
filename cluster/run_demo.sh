#!/usr/bin/env bash
# The README's main command: set up the environment, then show learning on a local Ray: warm-start the tiny
# offline model on the toy task (first run only, cached), train it with MOTIF GRPO and evaluate on held-out
# questions before, during and after. Extra arguments are config overrides (e.g. steps=80). A rerun continues the
# run in runs/demo (--resume auto): with a higher `steps` it trains on; to start over, remove runs/demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/cluster/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${MOTIF_VENV:-$root/.venv}/bin/motif" train --config cluster/configs/demo.yaml --resume auto "$@"
