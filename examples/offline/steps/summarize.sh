#!/bin/sh
# Joins the two upstream artifacts into a Markdown summary. Reads its inputs
# through FACTORY_INPUTS (a JSON map of "block.key" to a file path).
set -eu
words_file=$(sed -n 's/.*"collect-words.words": "\([^"]*\)".*/\1/p' "$FACTORY_INPUTS")
stats_file=$(sed -n 's/.*"collect-stats.stats": "\([^"]*\)".*/\1/p' "$FACTORY_INPUTS")
out="$FACTORY_OUTPUT_DIR/summary.md"
{
  echo "# Corpus summary: $FACTORY_PARAM_TITLE"
  echo
  echo "## Size"
  sed 's/[{}"]//g; s/, /\n/g' "$stats_file" | sed 's/^/- /'
  echo
  echo "## Most frequent words"
  grep -o '"word": "[a-z]*", "count": [0-9]*' "$words_file" \
    | sed 's/"word": "\([a-z]*\)", "count": \([0-9]*\)/- \1 (\2)/'
  if [ -n "${FACTORY_CORRECTIONS:-}" ]; then
    echo
    echo "## Reviewer corrections applied"
    grep -o '"correction": "[^"]*"' "$FACTORY_CORRECTIONS" | sed 's/"correction": "\(.*\)"/- \1/'
  fi
} > "$out"
