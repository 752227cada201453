#!/usr/bin/env bash
# Container entrypoint of the MeDi-Fed coordinator: start, resume or report a finished medi-server run.
#
# Settings come from environment variables (defaults in brackets):
#   MEDI_RUN_DIR             run folder on the persistent volume [/var/lib/medi/run]
#   MEDI_HOST, MEDI_PORT     address the SuperLink binds [0.0.0.0] and its port [9092]
#   MEDI_CERTS_DIR           folder with ca.crt, server.crt, server.key [/run/secrets]
#   MEDI_SUPERNODE_KEYS_DIR  folder whose *.pub files are the sites' SuperNode public keys [MEDI_CERTS_DIR]
#   MEDI_RUN_CONFIG          run settings: a .toml file or 'key=value ...' pairs [none: package defaults]
#   MEDI_AFTER_FINISH        what to do when the run has finished: exit (status 0) or idle [exit]
#   MEDI_LOG_LEVEL           DEBUG, INFO, WARNING or ERROR [INFO]
#   MEDI_PRINT_COMMAND       when 1, print the medi-server command line and exit instead of running it
#
# A run folder that contains federation.json but no report.json belongs to an
# interrupted run, so the container continues it with `medi-server --resume`.
# Extra arguments are passed on to medi-server.
set -euo pipefail

run_dir="${MEDI_RUN_DIR:-/var/lib/medi/run}"
host="${MEDI_HOST:-0.0.0.0}"
port="${MEDI_PORT:-9092}"
certs_dir="${MEDI_CERTS_DIR:-/run/secrets}"
keys_dir="${MEDI_SUPERNODE_KEYS_DIR:-$certs_dir}"
run_config="${MEDI_RUN_CONFIG:-}"
after_finish="${MEDI_AFTER_FINISH:-exit}"
log_level="${MEDI_LOG_LEVEL:-INFO}"

ENTRYPOINT_NAME=coordinator.sh
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

idle_after_finish() {
    # Keeps a Kubernetes Deployment from restarting a finished coordinator over and over.
    log "idling so the run folder can be copied; stop the container when done"
    sleeper=""
    trap 'log "stopping"; [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 0' TERM INT
    while true; do
        sleep 3600 &
        sleeper=$!
        wait "$sleeper" || true
    done
}

case "$after_finish" in
    exit | idle) ;;
    *) fail "MEDI_AFTER_FINISH=$after_finish is invalid; use exit or idle" ;;
esac

if [ -f "$run_dir/report.json" ]; then
    log "the run in $run_dir has finished: sampler in $run_dir/sampler, report in $run_dir/report.json"
    if [ "${MEDI_PRINT_COMMAND:-0}" = 1 ]; then
        echo "# finished: nothing to run"
        exit 0
    fi
    if [ "$after_finish" = idle ]; then
        idle_after_finish
    fi
    exit 0
fi

if [ -f "$run_dir/federation.json" ]; then
    log "resuming the interrupted run in $run_dir"
    run_command medi-server --log-level "$log_level" --resume "$run_dir" "$@"
fi

for name in ca.crt server.crt server.key; do
    require_readable "$certs_dir/$name" "create it with deploy/certs/generate_certs.py and mount it into $certs_dir"
done

shopt -s nullglob
keys=("$keys_dir"/*.pub)
shopt -u nullglob
[ "${#keys[@]}" -gt 0 ] || fail "no SuperNode public key (*.pub) in $keys_dir: mount one <site>.pub per site (deploy/certs/generate_certs.py --sites ...)"

args=(--log-level "$log_level" --run-dir "$run_dir" --host "$host" --port "$port" --certs "$certs_dir")
for key in "${keys[@]}"; do
    require_readable "$key" "the site's SuperNode public key"
    args+=(--supernode-key "$key")
done
if [ -n "$run_config" ]; then
    case "$run_config" in
        *.toml) require_readable "$run_config" "the run-config file named by MEDI_RUN_CONFIG" ;;
    esac
    args+=(--run-config "$run_config")
fi

log "starting a new run in $run_dir with ${#keys[@]} site key(s); SuperLink on $host:$port"
run_command medi-server "${args[@]}" "$@"
