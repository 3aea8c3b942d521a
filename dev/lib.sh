#!/usr/bin/env bash
# Shared by dev/stack and dev/kube (sourced; each defines its own `log`).

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what did not come up"
      return 1
    fi
    sleep 0.2
  done
}
