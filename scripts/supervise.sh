# scripts/supervise.sh — one way to start, check, wait for and stop the
# servers of scripts/aws-servers, scripts/control-plane and scripts/e2e-cluster.
# Sourced after lib.sh (log, die, now_ms, elapsed_s, show_file_tail), not run.
#
# The script sets STATE_DIR, START_TIMEOUT and STOP_TIMEOUT (seconds); it may
# set SV_LOG_DIR (default: STATE_DIR) and redefine sv_label (how messages name
# a server). A server NAME leaves in STATE_DIR:
#   NAME.pid        its PID (what the env files export)
#   NAME.starttime  its start time, field 22 of /proc/PID/stat: a PID that now
#                   has another start time was recycled, and is never signalled
# and its output in SV_LOG_DIR/NAME.log (emptied at each start, kept at stop).
#
#   sv_start NAME CMD...        run CMD in the background, in a session (and
#                               process group) of its own: setsid execs in
#                               place, so the PID is CMD's own
#   sv_running NAME             it is ours and has not exited (stopped by
#                               SIGSTOP counts as running, a zombie does not)
#   sv_wait NAME WHAT CHECK...  poll CHECK every 0.2 s until it succeeds; die
#                               with the log's tail as soon as NAME exits, or
#                               START_TIMEOUT after NAME started
#   sv_stop NAME...             TERM (and CONT, if a test left it SIGSTOPped)
#                               the process group of each that runs, all at
#                               once; wait until they exit, KILL what is left
#                               after STOP_TIMEOUT; remove the pid files, of
#                               those not running too
#   sv_wait_reaped              wait (3 s at most) until every process that
#                               sv_stop stopped has left the process table, so
#                               that `ps` right after is clean: an exited
#                               server whose parent is gone is reaped by PID 1,
#                               lazily (1 to 2 s on this VM)
#   sv_pid NAME                 the recorded PID, empty if none
#   sv_read FILE                its first line, empty if there is none
#   proc_state PID              R, S, T, Z... or empty if there is no such PID
# shellcheck shell=bash

set +m # no job control: a background job must not lead its own process group,
       # else `setsid` forks instead of exec'ing in place and `$!` is not CMD.

SV_LOG_DIR=""             # set by the script after sourcing, if not STATE_DIR
declare -gA SV_STARTED_MS # NAME -> now_ms at sv_start, for sv_wait's deadline
SV_STOPPED=()             # "PID STARTTIME" of each process sv_stop stopped

sv_read() {
  local line=""
  { read -r line <"$1"; } 2>/dev/null || true
  printf '%s' "$line"
}

sv_label() { printf '%s' "$1"; }
sv_pid() { sv_read "$STATE_DIR/$1.pid"; }
sv_log() { printf '%s/%s.log' "${SV_LOG_DIR:-$STATE_DIR}" "$1"; }

# proc_stat PID -> "STATE STARTTIME" from /proc/PID/stat, empty if gone
proc_stat() {
  local stat f
  [[ "$1" =~ ^[1-9][0-9]*$ ]] || return 0
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
  read -ra f <<<"${stat##*) }" # after the command name, which may hold ") "
  printf '%s %s' "${f[0]:-}" "${f[19]:-}"
}

proc_state() {
  local s
  s="$(proc_stat "$1")"
  printf '%s' "${s%% *}"
}

# sv_proc_state NAME -> the state of NAME's process (Z included), empty if
# it is gone or its PID now belongs to another process
sv_proc_state() {
  local pid start s
  pid="$(sv_pid "$1")"
  start="$(sv_read "$STATE_DIR/$1.starttime")"
  s="$(proc_stat "$pid")"
  [ -n "$start" ] && [ "${s#* }" = "$start" ] || return 0
  printf '%s' "${s%% *}"
}

sv_running() {
  local st
  st="$(sv_proc_state "$1")"
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

sv_start() {
  local name="$1" logf pid s
  shift
  logf="$(sv_log "$name")"
  : >"$logf"
  SV_STARTED_MS[$name]="$(now_ms)"
  setsid "$@" </dev/null >>"$logf" 2>&1 &
  pid=$!
  # Set at fork, kept across exec: read now, whatever the child runs yet.
  s="$(proc_stat "$pid")"
  echo "$pid" >"$STATE_DIR/$name.pid"
  echo "${s#* }" >"$STATE_DIR/$name.starttime"
}

sv_wait() {
  local name="$1" what="$2" pid t0 deadline
  shift 2
  pid="$(sv_pid "$name")"
  t0="${SV_STARTED_MS[$name]:-$(now_ms)}"
  deadline=$((t0 + START_TIMEOUT * 1000))
  while :; do
    if ! sv_running "$name"; then
      show_file_tail "$(sv_log "$name")"
      die "$(sv_label "$name") exited during startup (pid $pid)"
    fi
    "$@" && break
    if [ "$(now_ms)" -ge "$deadline" ]; then
      show_file_tail "$(sv_log "$name")"
      die "$(sv_label "$name"): $what not reached within ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "$(sv_label "$name"): $what (pid $pid, $(elapsed_s "$t0")s)"
}

# sv_signal SIG PID: to its process group (it leads one after setsid), else
# to the PID alone (forked, setsid not yet run)
sv_signal() {
  kill -"$1" -- "-$2" 2>/dev/null || kill -"$1" "$2" 2>/dev/null || true
}

sv_stop() {
  local name stopping=() still_running deadline
  for name in "$@"; do
    sv_running "$name" || continue
    log "stopping $(sv_label "$name") (pid $(sv_pid "$name"))"
    sv_signal TERM "$(sv_pid "$name")"
    sv_signal CONT "$(sv_pid "$name")"
    stopping+=("$name")
    SV_STOPPED+=("$(sv_pid "$name") $(sv_read "$STATE_DIR/$name.starttime")")
  done
  deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
  while :; do
    still_running=()
    for name in "${stopping[@]+"${stopping[@]}"}"; do
      sv_running "$name" && still_running+=("$name")
    done
    [ "${#still_running[@]}" -gt 0 ] || break
    if [ "$(now_ms)" -ge "$deadline" ]; then
      for name in "${still_running[@]}"; do
        log "$(sv_label "$name") (pid $(sv_pid "$name")) ignored TERM for ${STOP_TIMEOUT}s: KILL"
        sv_signal KILL "$(sv_pid "$name")"
      done
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  for name in "$@"; do
    rm -f "$STATE_DIR/$name.pid" "$STATE_DIR/$name.starttime"
  done
}

sv_wait_reaped() {
  local entry s deadline
  deadline=$(($(now_ms) + 3000))
  for entry in "${SV_STOPPED[@]+"${SV_STOPPED[@]}"}"; do
    while s="$(proc_stat "${entry%% *}")" && [ -n "$s" ] && [ "${s#* }" = "${entry#* }" ] &&
      [ "$(now_ms)" -lt "$deadline" ]; do
      sleep 0.05
    done
  done
}
