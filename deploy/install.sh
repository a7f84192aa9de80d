#!/bin/bash
# install.sh DESTDIR PREFIX: build cvpn (static, CGO_ENABLED=0) and install it with its systemd
# units, sysctl file, manual pages and shell completions under DESTDIR/PREFIX. `make install`
# and `make deb` run it; run it from the repository's top directory.
#
#   PREFIX/bin/cvpn
#   PREFIX/lib/systemd/system/cvpn.service, cvpn@.service   (ExecStart= names PREFIX/bin/cvpn)
#   PREFIX/lib/sysctl.d/60-cvpn.conf
#   PREFIX/share/man/man8/cvpn.8.gz, man5/cvpn-endpoint.5.gz
#   PREFIX/share/bash-completion/completions/cvpn
#   PREFIX/share/zsh/vendor-completions/_cvpn                (ZSH_COMPDIR overrides)
#   PREFIX/share/doc/cvpn/examples/endpoint.yaml
#   /etc/cvpn (under DESTDIR), where the endpoint file goes
#
# GO (go) is the Go command; BUILD (dist/build) holds the binary and generated files;
# CVPN_VERSION names the version in the manual pages.
set -euo pipefail

destdir=${1-}
prefix=${2:-/usr/local}
GO=${GO:-go}
BUILD=${BUILD:-dist/build}
zsh_compdir=${ZSH_COMPDIR:-$prefix/share/zsh/vendor-completions}
case $prefix in
/*) ;;
*) echo "install.sh: PREFIX must be an absolute path, not $prefix" >&2; exit 2 ;;
esac

mkdir -p "$BUILD/man"
CGO_ENABLED=0 "$GO" build -ldflags='-s -w' -o "$BUILD/cvpn" ./cmd/cvpn
"$GO" build -o "$BUILD/cvpn-docs" ./cmd/cvpn-docs
"$BUILD/cvpn-docs" man --cvpn "$BUILD/cvpn" --readme README.md --out "$BUILD/man" --version "${CVPN_VERSION:-}"
"$BUILD/cvpn" completion bash >"$BUILD/cvpn.bash"
"$BUILD/cvpn" completion zsh >"$BUILD/_cvpn"
gzip -9nf "$BUILD/man/cvpn.8" "$BUILD/man/cvpn-endpoint.5"

root=$destdir$prefix
install -D -m 0755 "$BUILD/cvpn" "$root/bin/cvpn"
for unit in cvpn.service cvpn@.service; do
	install -d -m 0755 "$root/lib/systemd/system"
	sed "s|/usr/bin/cvpn|$prefix/bin/cvpn|" "deploy/systemd/$unit" >"$root/lib/systemd/system/$unit"
	chmod 0644 "$root/lib/systemd/system/$unit"
done
install -D -m 0644 deploy/sysctl/60-cvpn.conf "$root/lib/sysctl.d/60-cvpn.conf"
install -D -m 0644 "$BUILD/man/cvpn.8.gz" "$root/share/man/man8/cvpn.8.gz"
install -D -m 0644 "$BUILD/man/cvpn-endpoint.5.gz" "$root/share/man/man5/cvpn-endpoint.5.gz"
install -D -m 0644 "$BUILD/cvpn.bash" "$root/share/bash-completion/completions/cvpn"
install -D -m 0644 "$BUILD/_cvpn" "$destdir$zsh_compdir/_cvpn"
install -D -m 0644 examples/endpoint.yaml "$root/share/doc/cvpn/examples/endpoint.yaml"
install -d -m 0755 "$destdir/etc/cvpn"
