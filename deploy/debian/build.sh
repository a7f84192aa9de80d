#!/bin/bash
# build.sh VERSION: build DIST/cvpn_VERSION_ARCH.deb from a tree staged by deploy/install.sh
# (PREFIX=/usr) with dpkg-deb --root-owner-group. `make deb` runs it from the repository's top
# directory. DIST defaults to dist; GO to go.
set -euo pipefail

version=${1:?usage: build.sh VERSION}
GO=${GO:-go}
DIST=${DIST:-dist}
arch=$("$GO" env GOARCH)
stage=$DIST/stage/cvpn_${version}_$arch
deb=$DIST/cvpn_${version}_$arch.deb
maintainer=$(sed -n 's/^Maintainer: //p' deploy/debian/control.in)
# The changelog's date: the commit's, so that two builds of one commit are the same.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
BUILD=$DIST/build CVPN_VERSION=$version GO=$GO deploy/install.sh "$stage" /usr

doc=$stage/usr/share/doc/cvpn
install -d -m 0755 "$doc"

# common_license FILE prints the name of the license in FILE when Debian ships its text.
common_license() {
	if grep -q 'Apache License' "$1" && grep -q 'Version 2.0' "$1"; then
		echo Apache-2.0
	elif grep -q 'Mozilla Public License Version 2.0' "$1"; then
		echo MPL-2.0
	else
		return 1
	fi
}

# copyright: cvpn's own notice, then the license of each Go module linked into the binary.
{
	cat deploy/debian/copyright.head
	"$GO" version -m "$stage/usr/bin/cvpn" | awk '$1 == "dep" { print $2, $3 }' | while read -r mod ver; do
		dir=$("$GO" env GOMODCACHE)/$(echo "$mod" | sed 's/[A-Z]/!\L&/g')@$ver
		lic=$(ls "$dir"/LICENSE* "$dir"/COPYING* 2>/dev/null | head -1 || true)
		printf '\nFiles: Go module %s %s\n' "$mod" "$ver"
		if [ -z "$lic" ]; then
			echo " (no license file found in the module)"
		elif common=$(common_license "$lic"); then
			# Debian keeps the texts of these licenses in /usr/share/common-licenses.
			printf 'License: %s\n On Debian systems the full text of this license is in\n /usr/share/common-licenses/%s.\n' "$common" "$common"
		else
			sed 's/^$/./; s/^/ /' "$lic"
		fi
	done
} >"$doc/copyright"
chmod 0644 "$doc/copyright"

{
	printf 'cvpn (%s) unstable; urgency=medium\n\n' "$version"
	printf '  * Built from git revision %s.\n\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# Go binaries are static, which lintian accepts only from a source package that build-depends on
# golang-go; this package is built from the Go module directly.
install -D -m 0644 deploy/debian/lintian-overrides "$stage/usr/share/lintian/overrides/cvpn"

for script in postinst prerm postrm; do
	install -m 0755 "deploy/debian/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" deploy/debian/control.in >"$stage/DEBIAN/control"

# Everything root's, as dpkg would install it, whoever built it.
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --build --root-owner-group -Zgzip "$stage" "$deb" >/dev/null
echo "$deb"
