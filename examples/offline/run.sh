#!/usr/bin/env bash
# Runs the offline example end to end: two parallel collectors, a human gate
# (approved here on your behalf), a quality threshold that fails once and
# passes on retry, and an HTML report; then the same run again, which reuses
# what the first accepted (memoized attempts). Needs only cargo and a POSIX
# shell.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --quiet -p factory-cli
factory="$root/target/debug/factory"
export FACTORY_DB="${FACTORY_DB:-$root/target/offline-example.db}"

echo "== validate and draw"
"$factory" validate examples/offline/pipeline.json
"$factory" graph examples/offline/pipeline.json

echo "== run until the gate"
run_id=$("$factory" run examples/offline/pipeline.json --param title="A Tale of Two Cities" --retry-backoff-ms 200)

echo "== approve the summary; the run continues"
"$factory" approve "$run_id" summarize --note "numbers checked" --retry-backoff-ms 200

echo "== the quality check's two attempts"
"$factory" artifacts "$run_id" quality-check
echo "== diff between them"
"$factory" artifacts "$run_id" quality-check --diff 1 2 || true

echo "== the report"
"$factory" artifacts "$run_id" publish --key report
echo

echo "== the same run again: blocks whose inputs did not change reuse what the first"
echo "   run accepted (quality-check opts out: its first attempt plays a flaky read)"
again=$("$factory" run examples/offline/pipeline.json --param title="A Tale of Two Cities" --retry-backoff-ms 200 --quiet)
"$factory" approve "$again" summarize --note "same numbers" --retry-backoff-ms 200 --quiet
"$factory" status "$again"
echo
echo "run ids: $run_id $again   (try: $factory status $run_id; $factory events $run_id)"
