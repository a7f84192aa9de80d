#!/bin/sh
# version.sh: the package version. A tag vX.Y.Z gives X.Y.Z, and X.Y.Z+N.gHASH N commits later;
# without a tag, 0.0.0+git.HASH (or VERSION's default, 0.0.0, outside a git tree).
v=$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && {
	v=${v#v}
	echo "$v" | sed 's/-\([0-9]*\)-g\([0-9a-f]*\)$/+\1.g\2/'
	exit 0
}
hash=$(git rev-parse --short HEAD 2>/dev/null) && { echo "0.0.0+git.$hash"; exit 0; }
echo "${VERSION:-0.0.0}"
