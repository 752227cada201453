# Shell functions shared by the MeDi-Fed entrypoints, which source this file.
#
# The sourcing script sets ENTRYPOINT_NAME first, for its log lines.

# Flower opens no connection of its own: telemetry, update checks and package installs are off.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) ${ENTRYPOINT_NAME}: $*" >&2; }
fail() { log "ERROR: $*"; exit 2; }

require_readable() {
    # $1: file, $2: what it is and how to provide it
    [ -e "$1" ] || fail "$1 not found: $2"
    [ -r "$1" ] || fail "$1 is not readable by uid $(id -u): make it readable for the container user (see docs/OPERATORS.md, 'File permissions')"
}

run_command() {
    # Replace this shell by the command, so that signals reach it. MEDI_PRINT_COMMAND=1 only prints it.
    if [ "${MEDI_PRINT_COMMAND:-0}" = 1 ]; then
        printf '%q ' "$@"
        printf '\n'
        exit 0
    fi
    exec "$@"
}
