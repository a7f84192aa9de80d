#!/usr/bin/env bash
# Runs every native Go fuzz target briefly, so none rots and each seed corpus is exercised with
# fresh inputs. FUZZTIME sets each target's budget (default 50000x: fifty thousand inputs).
#
# The default is a count, not a duration: with a duration, Go's fuzzing coordinator can fail a
# target with a bare "context deadline exceeded" when the time runs out (a race in
# internal/fuzz, golang/go#75804, fixed in Go 1.27). A count has no deadline to race. A real
# finding prints "Failing input written to" and fails the run either way.
set -euo pipefail
fuzztime=${FUZZTIME:-50000x}
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
