#!/bin/sh
# Line, word and character counts of the corpus as JSON.
set -eu
corpus="$FACTORY_TEMPLATE_DIR/data/corpus.txt"
set -- $(wc -l -w -c < "$corpus")
printf '{"lines": %d, "words": %d, "characters": %d}\n' "$1" "$2" "$3" > "$FACTORY_OUTPUT_DIR/stats.json"
