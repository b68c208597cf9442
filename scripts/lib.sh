# scripts/lib.sh — what the scripts in scripts/ share: versions, logging,
# timing and apt. Sourced, not run; the script sets PROG (for messages) and,
# before apt_install, APT_LOG (where apt's output goes).
# shellcheck shell=bash

# ---------------------------------------------------------------- versions --
# The Kubernetes the tests run: built from Debian bookworm's source package by
# `scripts/control-plane build`, into $KUBE_CACHE_ROOT/$KUBE_VERSION; the
# real-pods scripts (e2e-cluster, e2e-images) use the same build.
# shellcheck disable=SC2034 # used by the scripts that source this file
KUBE_VERSION=1.20.2
# shellcheck disable=SC2034
KUBE_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1 # source package `kubernetes`
# shellcheck disable=SC2034
KUBE_SRC_DIRNAME=kubernetes-1.20.5+really1.20.2   # what dpkg-source extracts
# shellcheck disable=SC2034
KUBE_CACHE_ROOT="${CLOUDKON_CACHE:-$HOME/.cache/cloudkon}/kube"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# Milliseconds since the epoch (bash 5 EPOCHREALTIME, else date).
now_ms() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    local t="${EPOCHREALTIME/[.,]/}"
    echo $((t / 1000))
  else
    echo $(($(date +%s) * 1000))
  fi
}
# elapsed_s START_MS -> "1.2"
elapsed_s() {
  local d=$(($(now_ms) - $1))
  printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# show_file_tail FILE [LINES]
show_file_tail() {
  if [ -s "$1" ]; then
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n "${2:-30}" "$1" >&2
    printf -- '---\n' >&2
  else
    printf '(%s is empty or missing)\n' "$1" >&2
  fi
}

# ------------------------------------------------------------------- apt --
as_root=()
need_root() {
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to $*"
    as_root=(sudo)
  fi
}

APT_UPDATED=0
apt_update() {
  need_root "run apt-get update"
  log "apt-get update"
  mkdir -p "$(dirname "$APT_LOG")"
  "${as_root[@]}" apt-get update -qq >>"$APT_LOG" 2>&1 || {
    show_file_tail "$APT_LOG"
    die "apt-get update failed"
  }
  APT_UPDATED=1
}

deb_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# apt_install PKG...: install those not installed yet
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "need system package(s) $*, and apt-get is not available: install them by hand"
  local p missing=()
  for p in "$@"; do deb_installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -gt 0 ] || return 0
  need_root "apt-get install ${missing[*]}"
  [ "$APT_UPDATED" = 1 ] || apt_update
  log "apt-get install ${missing[*]} (log: $APT_LOG)"
  # policy-rc.d 101: maintainer scripts must not start system-wide services
  # (etcd on :2379, containerd) where an init system runs.
  local prc=/usr/sbin/policy-rc.d made_prc=0
  if [ ! -e "$prc" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$prc" >/dev/null
    "${as_root[@]}" chmod +x "$prc"
    made_prc=1
  fi
  local rc=0
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$APT_LOG" 2>&1 || rc=$?
  [ "$made_prc" = 0 ] || "${as_root[@]}" rm -f "$prc"
  if [ "$rc" != 0 ]; then
    show_file_tail "$APT_LOG"
    die "apt-get install ${missing[*]} failed"
  fi
}

# apt_uri_for_suite SUITE: URI of the existing `deb` entry for SUITE
# (bookworm, bookworm-security, ...) in deb822 .sources files or one-line
# .list files; empty if none.
apt_uri_for_suite() {
  local suite="$1" f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk -v suite="$suite" 'BEGIN { RS = "" }
      /(^|\n)[Tt]ypes:[^\n]*deb([ \t]|\n|$)/ &&
      $0 ~ ("(^|\n)[Ss]uites:[^\n]*[ \t]" suite "([ \t]|\n|$)") {
        if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
          s = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", s); print s; exit
        }
      }' "$f")"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit } }')"
  fi
  echo "$uri"
}

# debian_mirror SUITE: the mirror of SUITE's `deb` entry; deb.debian.org if none.
debian_mirror() {
  local uri
  uri="$(apt_uri_for_suite "$1")"
  echo "${uri:-http://deb.debian.org/debian}"
}
