#!/usr/bin/env bash
# Runs every native Go fuzz target briefly, so none rots and each seed corpus is exercised with
# fresh inputs. FUZZTIME sets each target's budget (default 50000x: fifty thousand inputs).
#
# The default is a count, not a duration: with a duration, Go's fuzzing coordinator can fail a
# target with a bare "context deadline exceeded" when the time runs out (a race in
# internal/fuzz, golang/go#75804, fixed in Go 1.27). A count has no deadline to race. A real
# finding prints "Failing input written to" and fails the run either way.
#
# The targets are found in the test files' source rather than with `go test -list`, which would
# build and link a test binary for every package, most of which have no fuzz target.
set -euo pipefail
fuzztime=${FUZZTIME:-50000x}
status=0
found=0
while read -r pkg dir; do
	for target in $(grep -hoE '^func Fuzz[A-Za-z0-9_]*\(' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(/\1/' | sort -u); do
		found=$((found + 1))
		echo "fuzz $pkg $target ($fuzztime)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/fuzz-$$.log 2>&1; then
			cat /tmp/fuzz-$$.log
			status=1
		fi
	done
done < <(go list -f '{{.ImportPath}} {{.Dir}}' ./...)
rm -f /tmp/fuzz-$$.log
if [ "$found" -eq 0 ]; then
	echo "fuzz-smoke: no fuzz targets found" >&2
	exit 1
fi
echo "fuzz-smoke: $found targets"
exit $status
