#!/bin/sh
# Functions longer than $1 lines (default 100) in src/, longest first: lines, file, name.
# A function runs from its `fn` line to the next line at the same indentation that is `}`.
limit=${1:-100}
cd "$(dirname "$0")/.." || exit 2
find src -name '*.rs' | sort | while read -r f; do
  awk -v f="$f" -v limit="$limit" '
    !infn && /^[[:space:]]*(pub(\([a-z]+\))? )?(async )?(const )?fn [a-z_0-9]+/ && !/;[[:space:]]*$/ {
      match($0, /^[[:space:]]*/); ind = RLENGTH
      name = $0; sub(/.*fn /, "", name); sub(/[(<].*/, "", name)
      start = NR; infn = 1; next
    }
    infn {
      match($0, /^[[:space:]]*/)
      if (RLENGTH == ind && $0 ~ /^[[:space:]]*}[[:space:]]*$/) {
        n = NR - start + 1
        if (n > limit) printf "%4d %s %s\n", n, f, name
        infn = 0
      }
    }
  ' "$f"
done | sort -rn
