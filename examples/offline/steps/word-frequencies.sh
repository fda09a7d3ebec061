#!/bin/sh
# Counts words in the corpus and writes the top N as JSON.
set -eu
corpus="$FACTORY_TEMPLATE_DIR/data/corpus.txt"
top="${FACTORY_PARAM_TOP_WORDS:-10}"
tr -cs 'A-Za-z' '\n' < "$corpus" | tr 'A-Z' 'a-z' | grep -v '^$' \
  | awk 'length($0) > 3' | sort | uniq -c | sort -k1,1nr -k2 | head -n "$top" \
  | awk 'BEGIN { printf "{\"words\": [" } { if (NR > 1) printf ", "; printf "{\"word\": \"%s\", \"count\": %d}", $2, $1 } END { print "]}" }' \
  > "$FACTORY_OUTPUT_DIR/words.json"
echo "counted words in $corpus"
