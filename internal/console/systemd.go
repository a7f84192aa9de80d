package console

import "os"

// systemdRuntime is the directory whose system/ subdirectory tells libsystemd that systemd is
// the running init (sd_booted in libsystemd's sd-daemon.c checks that /run/systemd/system/
// exists).
const systemdRuntime = "/run/systemd"

// WithoutSystemd returns args wrapped so that the program cannot see a running systemd, or args
// unchanged when none is running.
//
// Why: Debian builds openvpn with systemd support, and then query_user_exec
// (src/openvpn/console_systemd.c) asks for passwords through systemd-ask-password instead of on
// the terminal whenever check_systemd_running finds sd_booted() true and the
// systemd-ask-password binary present; only otherwise does it fall back to the builtin console
// (src/openvpn/console_builtin.c), which prompts on /dev/tty. OpenVPN has no option or variable to
// choose; so on a host booted with systemd the wrapper runs the program in a private mount
// namespace (unshare --mount, propagation private) with an empty tmpfs over /run/systemd. The
// host's mounts are not touched.
func WithoutSystemd(args []string) []string {
	return withoutSystemd(args, systemdRuntime)
}

func withoutSystemd(args []string, runtimeDir string) []string {
	if _, err := os.Lstat(runtimeDir + "/system"); err != nil {
		return args
	}
	// sh execs the program, so its pid (and session, and controlling tty) stay the program's.
	script := `mount -t tmpfs -o size=64k,mode=0755 cvpn-console "$0" && exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, runtimeDir}, args...)
}
