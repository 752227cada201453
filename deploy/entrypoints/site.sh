#!/usr/bin/env bash
# Container entrypoint of a MeDi-Fed hospital site: `prepare` tiles local slides, `start` joins the federation.
#
# Usage: site.sh [start|prepare] [extra medi-client options ...]   (default: start)
#
# Settings come from environment variables (defaults in brackets):
#   MEDI_SITE_ID            this site's name in the federation, as in its key file name (required for start)
#   MEDI_SUPERLINK          the coordinator's HOST:PORT (required for start)
#   MEDI_DATA               patch source: the patch store that `prepare` writes, or a
#                           TCGA-UT folder, labelled folder or manifest CSV [/var/lib/medi/patches]
#   MEDI_DATA_KIND          auto, patch_store, tcga_ut, labelled_folder or manifest [auto]
#   MEDI_OUTPUT_DIR         synthetic patches, received sampler, privacy accountant [/var/lib/medi/output]
#   MEDI_MAX_EPSILON        this site's differential-privacy budget; 0 trains without DP [0]
#   MEDI_MIN_K              smallest k-anonymity threshold this site accepts in the handshake [5]
#   MEDI_DEVICE             auto, cpu or cuda [auto]
#   MEDI_ROOT_CERT          the federation's CA certificate [/run/secrets/ca.crt]
#   MEDI_AUTH_KEY           this site's SuperNode private key [/run/secrets/supernode.key]
#   MEDI_TRUSTED_ENTITIES   trust list of app-signing keys; empty: accept any app bundle [empty]
#   MEDI_AUDIT_LOG          JSONL list of every reply this site sends [MEDI_OUTPUT_DIR/audit.jsonl]
#   MEDI_RUNTIME_PORT       local port of the SuperNode's Runtime API [9094]
#   MEDI_SLIDES             slide folder read by `prepare` [/var/lib/medi/slides]
#   MEDI_SLIDE_METADATA     slide metadata CSV read by `prepare` [MEDI_SLIDES/slides.csv]
#   MEDI_WAIT_FOR_SLIDES    when 1, `prepare` waits (every MEDI_WAIT_SECONDS [30]) until that CSV exists
#   MEDI_LOG_LEVEL          DEBUG, INFO, WARNING or ERROR [INFO]
#   MEDI_PRINT_COMMAND      when 1, print the medi-client command line and exit instead of running it
set -euo pipefail

mode="${1:-start}"
if [ "$#" -gt 0 ]; then
    shift
fi

data="${MEDI_DATA:-/var/lib/medi/patches}"
log_level="${MEDI_LOG_LEVEL:-INFO}"

ENTRYPOINT_NAME=site.sh
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

require_set() {
    # $1: variable name, $2: example value
    [ -n "${!1:-}" ] || fail "$1 is not set; set it in the container environment, for example $1=$2"
}

case "$mode" in
    prepare)
        slides="${MEDI_SLIDES:-/var/lib/medi/slides}"
        metadata="${MEDI_SLIDE_METADATA:-$slides/slides.csv}"
        if [ "${MEDI_WAIT_FOR_SLIDES:-0}" = 1 ]; then
            # Kubernetes: the init container waits until the slides are copied onto the volume.
            mkdir -p "$slides"  # on a fresh volume, so that the slides can be copied in
            sleeper=""
            trap 'log "stopped while waiting for slides"; [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 143' TERM INT
            while [ ! -f "$metadata" ]; do
                log "waiting for $metadata; copy the slides and their CSV into $slides (see docs/OPERATORS.md)"
                sleep "${MEDI_WAIT_SECONDS:-30}" &
                sleeper=$!
                wait "$sleeper" || true
            done
            trap - TERM INT
        fi
        [ -d "$slides" ] || fail "slide folder $slides not found; mount the slides there or set MEDI_SLIDES"
        require_readable "$metadata" "the slide metadata CSV; set MEDI_SLIDE_METADATA"
        log "tiling the slides in $slides into the patch store $data"
        run_command medi-client --log-level "$log_level" prepare --slides "$slides" --metadata "$metadata" \
            --out "$data" --no-progress "$@"
        ;;
    start)
        require_set MEDI_SITE_ID A7
        require_set MEDI_SUPERLINK coordinator:9092
        output="${MEDI_OUTPUT_DIR:-/var/lib/medi/output}"
        root_cert="${MEDI_ROOT_CERT:-/run/secrets/ca.crt}"
        auth_key="${MEDI_AUTH_KEY:-/run/secrets/supernode.key}"
        trusted="${MEDI_TRUSTED_ENTITIES:-}"
        require_readable "$root_cert" "the federation's ca.crt from the coordinator"
        require_readable "$auth_key" "this site's SuperNode private key (certs/supernodes/$MEDI_SITE_ID)"
        [ -e "$data" ] || fail "patch source $data not found; run 'site.sh prepare' first or set MEDI_DATA"
        args=(--log-level "$log_level" start
            --superlink "$MEDI_SUPERLINK"
            --root-cert "$root_cert"
            --auth-key "$auth_key"
            --site-id "$MEDI_SITE_ID"
            --data "$data"
            --data-kind "${MEDI_DATA_KIND:-auto}"
            --output-dir "$output"
            --max-epsilon "${MEDI_MAX_EPSILON:-0}"
            --min-k "${MEDI_MIN_K:-5}"
            --device "${MEDI_DEVICE:-auto}"
            --audit-log "${MEDI_AUDIT_LOG:-$output/audit.jsonl}"
            --runtime-port "${MEDI_RUNTIME_PORT:-9094}")
        if [ -n "$trusted" ]; then
            require_readable "$trusted" "the trust list of app-signing keys (trusted-entities.yaml)"
            args+=(--trusted-entities "$trusted")
        fi
        log "site $MEDI_SITE_ID joins the federation at $MEDI_SUPERLINK"
        run_command medi-client "${args[@]}" "$@"
        ;;
    *)
        fail "unknown command '$mode'; use 'start' (join the federation) or 'prepare' (tile slides)"
        ;;
esac
