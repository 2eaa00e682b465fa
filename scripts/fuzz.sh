#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target of the root module for FUZZTIME each
# (default 30s): `make fuzz`. `make test` runs their seed corpora only, as
# ordinary tests. A failure leaves the crashing input in the package's
# testdata/fuzz/<Target>/ (commit it as a regression seed) and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
failed=0
for pkg in $(go list ./internal/...); do
  for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "fuzz: $pkg $target ($FUZZTIME)"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg"; then
      echo "fuzz: $pkg $target FAILED" >&2
      failed=1
    fi
  done
done
exit $failed
