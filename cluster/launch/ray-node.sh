#!/usr/bin/env bash
# One node of a motif-rl Ray cluster, started the same way by docker compose, the Slurm script and `ray up`:
#   ray-node.sh head [ray start args]           start the head and block
#   ray-node.sh worker HOST:PORT [ray start args] join the head at HOST:PORT and block
#   ray-node.sh submit URL [--] COMMAND...      submit COMMAND as a Ray job (a checkout as its working dir)
#                                               to the job API at URL, follow its logs, exit 0 if it succeeded;
#                                               MOTIF_FORWARD_ENV names variables beyond the allow-list
# Token authentication is always on: every node and client needs the same token, in RAY_AUTH_TOKEN or in the
# file Ray reads by default (~/.ray/auth_token). The dashboard and job API listen on RAY_DASHBOARD_HOST (default
# 127.0.0.1); RAY_PORT (6379), RAY_DASHBOARD_PORT (8265) and RAY_DASHBOARD_AGENT_PORT (52365: each node's job agent;
# another Ray on the same machine may hold it). RAY_NODE_BLOCK=0: start and return (`ray up`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  echo "ray-node.sh: no Ray token: set RAY_AUTH_TOKEN to a shared secret (e.g. \$(openssl rand -hex 32))" >&2
  exit 2
fi
export RAY_AUTH_MODE=token
block=(--block)
[ "${RAY_NODE_BLOCK:-1}" = 0 ] && block=()
agent_port="--dashboard-agent-listen-port=${RAY_DASHBOARD_AGENT_PORT:-52365}"
role="${1:?usage: ray-node.sh head|worker HOST:PORT|submit URL -- COMMAND...}"
shift

case "$role" in
  head)
    exec ray start --head "${block[@]}" --disable-usage-stats "$agent_port" --port="${RAY_PORT:-6379}" \
      --dashboard-host="${RAY_DASHBOARD_HOST:-127.0.0.1}" --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" "$@"
    ;;
  worker)
    address="${1:?usage: ray-node.sh worker HOST:PORT}"
    shift
    exec ray start --address="$address" "${block[@]}" --disable-usage-stats "$agent_port" "$@"
    ;;
  submit)
    url="${1:?usage: ray-node.sh submit URL -- COMMAND...}"
    shift
    [ "${1:-}" = "--" ] && shift
    # The job sees the variables of cluster.forward_env's default allow-list (offline hubs, caches) and those
    # named in MOTIF_FORWARD_ENV (space-separated; e.g. HF_TOKEN): a job's runtime env is readable by anyone
    # with access to the cluster, so secrets travel only when named.
    # From a checkout its own package is imported, whatever the working directory holds.
    [ -f "$root/pyproject.toml" ] && export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    env_json="$(python3 -c 'import json, os
from cluster.config import ClusterConfig
from cluster.workers import forwarded_env
names = ClusterConfig().forward_env + os.environ.get("MOTIF_FORWARD_ENV", "").split()
print(json.dumps({"env_vars": forwarded_env(names, os.environ)}))')"
    id="motif-$(date +%Y%m%d-%H%M%S)-$$"
    # A checkout travels with the job as its working dir; an installed copy (site-packages) does not: there the
    # nodes run their own installed motif.
    workdir=()
    [ -f "$root/pyproject.toml" ] && workdir=(--working-dir="$root")
    # A head that has just started answers "No available agent to submit job" until its node's job agent has
    # registered: try again for a minute, fail at once on anything else.
    for attempt in $(seq 30); do
      if out="$(ray job submit --address="$url" --submission-id="$id" --no-wait "${workdir[@]}" \
          --runtime-env-json="$env_json" -- "$@" 2>&1)"; then
        break
      fi
      if ! grep -q "No available agent" <<<"$out" || [ "$attempt" = 30 ]; then
        echo "$out" >&2
        exit 1
      fi
      sleep 2
    done
    echo "ray-node.sh: submitted job $id to $url"
    ray job logs --address="$url" --follow "$id"
    status="$(ray job status --address="$url" "$id" 2>&1)"
    echo "$status"
    grep -qi "succeeded" <<<"$status"
    ;;
  *)
    echo "ray-node.sh: unknown role '$role' (head, worker or submit)" >&2
    exit 2
    ;;
esac
