#!/bin/sh
# Renders the approved summary and its quality check as one HTML page.
set -eu
summary=$(sed -n 's/.*"summarize.summary": "\([^"]*\)".*/\1/p' "$FACTORY_INPUTS")
check=$(sed -n 's/.*"quality-check.check": "\([^"]*\)".*/\1/p' "$FACTORY_INPUTS")
{
  echo "<!doctype html><html><head><meta charset=\"utf-8\"><title>$FACTORY_PARAM_TITLE</title></head><body>"
  sed -e 's/&/\&amp;/g; s/</\&lt;/g' \
      -e 's/^# \(.*\)/<h1>\1<\/h1>/; s/^## \(.*\)/<h2>\1<\/h2>/; s/^- \(.*\)/<li>\1<\/li>/' "$summary"
  echo "<p>Quality check: <code>$(cat "$check")</code></p>"
  echo "</body></html>"
} > "$FACTORY_OUTPUT_DIR/report.html"
