#!/bin/sh
# A stand-in for a Spark image's entrypoint, for the pod tests (tests/it/podman.rs). It runs in an
# image with busybox-static and no libc. Like EMR's Spark container it writes the container's stdout
# and stderr, the driver's event log, and a heartbeat; what it writes comes from $STANDIN_DATA
# (mounted read-only by the test), piece by piece, one second apart, so the sidecar ships while the
# "job" runs. Spark passes the role as the first argument (`driver` / `executor`).
#
#   STANDIN_DATA       directory with stdout.N, stderr.N and (driver) events.N, N = 1, 2, ...
#   STANDIN_OUTPUT     files: append to $K8S_SPARK_LOG_URL_STDOUT / _STDERR (EMR's images);
#                      streams: write to the process's own stdout / stderr (under `logship wrap`)
#   STANDIN_HEARTBEAT  1: touch $SIDECAR_SIGNAL_FILE every 2 s until the end (EMR's images)
#   STANDIN_EVENTS     single: $DIR/<app>.inprogress, renamed to $DIR/<app> at the end;
#                      rolling: $DIR/eventlog_v2_<app>/events_N_<app> with appstatus_<app>[.inprogress]
#   STANDIN_EVENT_DIR  the event-log directory; STANDIN_APP the application id
#   STANDIN_HOLD       if set, wait for this file to exist before ending (a job stopped from outside)
set -eu
role=${1:-driver}
# As PID 1 a shell ignores SIGTERM unless it sets a handler; Spark's JVM ends on it.
trap 'exit 143' TERM
data=$STANDIN_DATA

if [ "${STANDIN_HEARTBEAT:-0}" = 1 ]; then
  ( while :; do touch "$SIDECAR_SIGNAL_FILE"; sleep 2; done ) &
  beat=$!
fi

if [ "${STANDIN_OUTPUT:-files}" = files ]; then
  mkdir -p "$(dirname "$K8S_SPARK_LOG_URL_STDOUT")" "$(dirname "$K8S_SPARK_LOG_URL_STDERR")"
  out=$K8S_SPARK_LOG_URL_STDOUT
  err=$K8S_SPARK_LOG_URL_STDERR
else
  out=/dev/stdout
  err=/dev/stderr
fi

events=
if [ "$role" = driver ]; then
  dir=$STANDIN_EVENT_DIR
  app=$STANDIN_APP
  case ${STANDIN_EVENTS:-single} in
    single) events=$dir/$app.inprogress ;;
    rolling)
      mkdir -p "$dir/eventlog_v2_$app"
      : >"$dir/eventlog_v2_$app/appstatus_$app.inprogress"
      ;;
  esac
fi

n=1
while [ -e "$data/stdout.$n" ]; do
  cat "$data/stdout.$n" >>"$out"
  cat "$data/stderr.$n" >>"$err"
  if [ -e "$data/events.$n" ]; then
    case ${STANDIN_EVENTS:-single} in
      single) cat "$data/events.$n" >>"$events" ;;
      rolling) cat "$data/events.$n" >"$dir/eventlog_v2_$app/events_${n}_$app" ;;
    esac
  fi
  n=$((n + 1))
  sleep 1
done

if [ -n "${STANDIN_HOLD:-}" ]; then
  while [ ! -e "$STANDIN_HOLD" ]; do sleep 1; done
fi

if [ "$role" = driver ]; then
  case ${STANDIN_EVENTS:-single} in
    single) mv "$events" "$dir/$app" ;;
    rolling) mv "$dir/eventlog_v2_$app/appstatus_$app.inprogress" "$dir/eventlog_v2_$app/appstatus_$app" ;;
  esac
fi
if [ -n "${beat:-}" ]; then kill "$beat"; fi
echo "standin $role: done" >>"$err"
