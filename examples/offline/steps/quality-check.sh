#!/bin/sh
# Scores the summary: sections present and word list long enough. The first
# attempt simulates a flaky upstream (a truncated read) and scores low, so the
# block's threshold sends it round the retry loop once.
set -eu
summary=$(sed -n 's/.*"summarize.summary": "\([^"]*\)".*/\1/p' "$FACTORY_INPUTS")
sections=$(grep -c '^## ' "$summary" || true)
items=$(grep -c '^- ' "$summary" || true)
if [ "$FACTORY_ATTEMPT" -eq 1 ]; then
  items=$((items / 4))
  echo "attempt 1: simulating a truncated read of $summary" >&2
fi
score=$(( sections * 20 + items * 4 ))
[ "$score" -gt 100 ] && score=100
printf '{"quality": %d, "score": %d}\n' "$score" "$score" > "$FACTORY_OUTPUT_DIR/metrics.json"
printf '{"sections": %d, "items": %d, "quality": %d}\n' "$sections" "$items" "$score" > "$FACTORY_OUTPUT_DIR/check.json"
echo "quality $score (sections $sections, items $items)"
