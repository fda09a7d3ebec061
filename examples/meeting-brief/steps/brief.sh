#!/bin/sh
# The brief: each perspective's summary and questions, in one page. Reads
# every analysis the perspectives made (inputs/perspective[<key>]/analysis.md).
set -eu
inputs="$(dirname "$FACTORY_INPUTS")/inputs"
entity="$FACTORY_PARAM_ENTITY"
{
  printf '# Meeting brief: %s\n\n' "$entity"
  printf '## By perspective\n\n'
  for analysis in "$inputs"/perspective*/analysis.md; do
    [ -f "$analysis" ] || continue
    title=$(head -n 1 "$analysis" | sed 's/^# //')
    printf '### %s\n\n' "$title"
    sed -n '/^## Summary/,/^## Findings/p' "$analysis" | sed '1d;$d'
  done
  printf '## Agenda\n\n'
  for analysis in "$inputs"/perspective*/analysis.md; do
    [ -f "$analysis" ] || continue
    sed -n '/^## Questions to ask/,/^## Confidence/p' "$analysis" | grep '^- ' | grep -v '(none noted)' || true
  done
  printf '\n## Gaps\n\n'
  made=$(ls "$inputs"/perspective*/analysis.md 2>/dev/null | wc -l | tr -d ' ')
  printf '%s perspective analyses made; a perspective whose notes said nothing is left out.\n' "$made"
} | cat -s > "$FACTORY_OUTPUT_DIR/brief.md"
