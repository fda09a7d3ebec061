#!/usr/bin/env bash
# Runs the offline example end to end: two parallel collectors, a human gate
# (approved here on your behalf), a quality threshold that fails once and
# passes on retry, and an HTML report. Needs only cargo and a POSIX shell.
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
echo "run id: $run_id   (try: $factory status $run_id; $factory events $run_id)"
