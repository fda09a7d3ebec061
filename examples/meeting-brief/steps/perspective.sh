#!/bin/sh
# One perspective of the brief: the entity's notes tagged [<key>] (the
# instance's key, FACTORY_ITEM_KEY), as a summary, findings and questions.
set -eu
entity="$FACTORY_PARAM_ENTITY"
slug=$(printf '%s' "$entity" | tr 'A-Z ' 'a-z-')
notes="$FACTORY_TEMPLATE_DIR/entities/$slug.md"
[ -f "$notes" ] || { echo "no notes for $entity: expected $notes" >&2; exit 2; }
title=$(printf '%s' "$FACTORY_ITEM" | sed 's/^"//; s/"$//')
findings=$(grep -i "^\[$FACTORY_ITEM_KEY\] " "$notes" | sed 's/^\[[^]]*\] //' || true)
questions=$(grep -i "^\[$FACTORY_ITEM_KEY?\] " "$notes" | sed 's/^\[[^]]*\] //' || true)
if [ -z "$findings" ]; then
  echo "the notes on $entity say nothing tagged [$FACTORY_ITEM_KEY]" >&2
  exit 3
fi
count=$(printf '%s\n' "$findings" | wc -l | tr -d ' ')
{
  printf '# %s: %s\n\n' "$title" "$entity"
  printf '## Summary\n\n%s: %s finding(s) on %s from the notes. The first: %s\n\n' \
    "$title" "$count" "$entity" "$(printf '%s\n' "$findings" | head -n 1)"
  printf '## Findings\n\n'
  printf '%s\n' "$findings" | sed 's/^/- /'
  printf '\n## Questions to ask\n\n'
  if [ -n "$questions" ]; then printf '%s\n' "$questions" | sed 's/^/- /'; else echo "- (none noted)"; fi
  printf '\n## Confidence\n\n%s: %s finding(s) in the notes.\n' \
    "$( [ "$count" -ge 3 ] && echo high || echo medium )" "$count"
  # Past ratings of this perspective for this entity (lens.feedback_loop):
  # a model would take them into its analysis; this step quotes them.
  if [ -n "${FACTORY_FEEDBACK:-}" ]; then
    rated=$(printf '%s' "$FACTORY_FEEDBACK" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
    mean=$(printf '%s' "$FACTORY_FEEDBACK" | sed -n 's/.*"mean":\([0-9.]*\).*/\1/p')
    printf '\n## Readers asked for\n\n%s earlier rating(s), mean %s of 5.\n' "$rated" "$mean"
    printf '%s' "$FACTORY_FEEDBACK" | grep -o '"comment":"[^"]*"' | sed 's/^"comment":"/- /; s/"$//' || true
  fi
} > "$FACTORY_OUTPUT_DIR/analysis.md"
