#!/usr/bin/env bash
# Two replicas of examples/celery_beat/app.py, each a worker with beat embedded, on the Redis
# server at $REDIS_URL (default redis://127.0.0.1:6379/0). After $SECONDS_BEFORE_STOP seconds
# (default 12) the leading replica gets SIGTERM, and the other one's beat takes over; after as
# many again both stop. Lines are prefixed with the replica that printed them.
set -euo pipefail
cd "$(dirname "$0")"
wait_seconds=${SECONDS_BEFORE_STOP:-12}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
start() {  # start NAME: one replica, its output prefixed with NAME
  celery -A app worker -B --scheduler singleton_jobs.celery:LeaderScheduler \
    -s "$work/$1-schedule" --hostname "$1@%h" --pool solo -l info 2>&1 \
    | grep --line-buffered -E "report sent|became leader|stopped leading|released|not sending" \
    | sed -u "s/^/[$1] /" &
}
start replica-1
sleep 2
start replica-2
sleep "$wait_seconds"
echo "--- SIGTERM to replica-1 (the first one, which leads): replica-2's beat takes over"
pkill -TERM -f -- "--hostname replica-1@" || true
sleep "$wait_seconds"
echo "--- stopping replica-2"
pkill -TERM -f -- "--hostname replica-2@" || true
wait
