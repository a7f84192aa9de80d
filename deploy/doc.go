// Package deploy holds what installs cvpn as a systemd service rather than Go code: the units
// (systemd/cvpn.service, systemd/cvpn@.service), the sysctl file (sysctl/60-cvpn.conf),
// install.sh (make install) and the Debian package's files (debian/, make deb). Its tests score
// and verify the units with systemd-analyze, apply the sysctl file in a network namespace,
// build the package and check it with lintian.
package deploy
