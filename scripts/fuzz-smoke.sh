#!/usr/bin/env bash
# Runs every native Go fuzz target briefly, so none rots and each seed corpus is exercised with
# fresh inputs. FUZZTIME sets how long each target runs (default 2s).
set -euo pipefail
fuzztime=${FUZZTIME:-2s}
status=0
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "fuzz $pkg $target ($fuzztime)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/fuzz-$$.log 2>&1; then
			cat /tmp/fuzz-$$.log
			status=1
		fi
	done
done
rm -f /tmp/fuzz-$$.log
exit $status
