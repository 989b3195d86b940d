#!/bin/sh
# mcphub sandbox entrypoint: start the sidecar, wait until it serves, then become the agent command.
#
#   ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/mcphub-entrypoint"]
#   CMD ["your-agent", "--flags"]
#
# Environment:
#   MCPHUB_MANIFEST        the image's manifest (default /etc/mcphub/manifest.yaml)
#   MCPHUB_LOCAL_GRPC      the sidecar's ToolHub address on loopback (default 127.0.0.1:7072)
#   MCPHUB_LOCAL_HTTP      the sidecar's MCP endpoint on loopback (default 127.0.0.1:7073; "off" for none)
#   MCPHUB_HUB             register with the hub at this gRPC address (unset: serve locally only)
#   MCPHUB_TOKEN           the sandbox's token at the hub (a principal with the role `sandbox`);
#                          it is NOT passed on to the agent command
#   MCPHUB_AGENT_TOKEN     passed on to the agent command as MCPHUB_TOKEN, if set
#   MCPHUB_SANDBOX         the sandbox's name (default: the token's principal)
#   MCPHUB_READY_TIMEOUT   whole seconds to wait for the sidecar (default 30; 1 to 999999: 0 would
#                          fail every start, so it is refused like any other bad value)
#
# The agent command replaces this shell (exec), so it receives the container's signals; with
# `tini -g` they reach the whole process group, the sidecar included. Signals that arrive while
# the sidecar is still starting stop it and end the container.
set -eu

manifest=${MCPHUB_MANIFEST:-/etc/mcphub/manifest.yaml}
grpc=${MCPHUB_LOCAL_GRPC:-127.0.0.1:7072}
http=${MCPHUB_LOCAL_HTTP:-127.0.0.1:7073}
timeout=${MCPHUB_READY_TIMEOUT:-30}
# Checked before anything starts: the wait loop's arithmetic would otherwise stop the shell
# with "Illegal number" (not naming the variable) and leave the sidecar running.
# No leading zero (the shell reads 010 as octal, 08 as an error), at most 6 digits (past that
# its integers overflow), and not 0: no sidecar is ready after no time at all.
case $timeout in
  '' | *[!0-9]* | 0* | ???????*)
    echo "mcphub-entrypoint: MCPHUB_READY_TIMEOUT must be a whole number of seconds (1 to 999999, no leading zero), not '$timeout'" >&2
    exit 2
    ;;
esac
run_dir=${MCPHUB_RUN_DIR:-${TMPDIR:-/tmp}/mcphub-$(id -u)}
ready="$run_dir/sidecar.ready"

mkdir -p "$run_dir"
rm -f "$ready"

start_sidecar() {
  # A function has its own positional parameters: "$@" outside stays the agent command.
  set -- local serve --manifest "$manifest" --grpc "$grpc" --ready-file "$ready"
  if [ "$http" != "off" ]; then
    set -- "$@" --http "$http"
  fi
  if [ -n "${MCPHUB_HUB:-}" ]; then
    set -- "$@" --hub "$MCPHUB_HUB"  # the token travels in $MCPHUB_TOKEN, never in argv
  fi
  mcphub "$@" &
  sidecar=$!
}

start_sidecar
trap 'kill -TERM "$sidecar" 2>/dev/null; wait "$sidecar" 2>/dev/null; exit 143' TERM INT HUP

waited=0
while [ ! -s "$ready" ]; do
  if ! kill -0 "$sidecar" 2>/dev/null; then
    wait "$sidecar" || status=$?
    echo "mcphub-entrypoint: the sidecar exited (status ${status:-0}) before it was ready" >&2
    exit 1
  fi
  if [ "$waited" -ge $((timeout * 10)) ]; then
    echo "mcphub-entrypoint: the sidecar was not ready after ${timeout}s" >&2
    kill -TERM "$sidecar" 2>/dev/null || true
    exit 1
  fi
  sleep 0.1
  waited=$((waited + 1))
done
trap - TERM INT HUP

# The agent reaches the sidecar at the addresses it bound (from its ready line), and never sees
# the sandbox's own hub token.
MCPHUB_SIDECAR_GRPC=$(sed -n 's/.*"grpc": "\([^"]*\)".*/\1/p' "$ready")
export MCPHUB_SIDECAR_GRPC
mcp_url=$(sed -n 's/.*"mcp": "\([^"]*\)".*/\1/p' "$ready")
if [ -n "$mcp_url" ]; then
  MCPHUB_SIDECAR_MCP=$mcp_url
  export MCPHUB_SIDECAR_MCP
fi
if [ -n "${MCPHUB_AGENT_TOKEN:-}" ]; then
  MCPHUB_TOKEN=$MCPHUB_AGENT_TOKEN
  export MCPHUB_TOKEN
else
  unset MCPHUB_TOKEN
fi
unset MCPHUB_AGENT_TOKEN

if [ "$#" -eq 0 ]; then
  set -- sleep infinity
fi
exec "$@"
