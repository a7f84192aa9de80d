#!/bin/sh
# boot.sh prepares a machine's root and execs systemd as PID 1 of fresh namespaces. systemdlab
# runs it as `sh boot.sh outer`; it re-runs itself as `inner` inside the namespaces.
#
# Environment (set by systemdlab, never by the machine):
#   SDLAB_DIR      the machine's host directory: seed/ (files copied over the root), root/ (mount
#                  point of the merged root), rw/ (mount point of the tmpfs holding upper and work)
#   SDLAB_NAME     the machine's name: hostname, netns name, cgroup name
#   SDLAB_CGROUPS  cgroup.procs files of the machine's own cgroups, one per hierarchy; the
#                  cgroup namespace is rooted there, so systemd creates its tree below them
#   SDLAB_TARGET   the unit systemd starts (basic.target unless the test asks otherwise)
#   SDLAB_RWSIZE   size of the tmpfs holding the overlay's upper layer
set -eu

if [ "${1:-}" = outer ]; then
	for f in $SDLAB_CGROUPS; do
		echo $$ >"$f"
	done
	exec unshare --pid --fork --kill-child=SIGKILL --mount --propagation private \
		--cgroup --uts --ipc --net /bin/sh "$0" inner
fi
[ "${1:-}" = inner ] || { echo "usage: boot.sh outer" >&2; exit 2; }

D=$SDLAB_DIR
R=$D/root

# The root: the host's root file system read-only below, a tmpfs above. The upper layer lives in
# this mount namespace only, so it goes away with the machine; lowerdir=/ sees the root file
# system alone, none of the host's other mounts.
mount -t tmpfs -o "mode=0700,size=$SDLAB_RWSIZE" sdlab-rw "$D/rw"
mkdir "$D/rw/upper" "$D/rw/work"
mount -t overlay -o "lowerdir=/,upperdir=$D/rw/upper,workdir=$D/rw/work" sdlab-root "$R"
cp -a "$D/seed/." "$R/"

# /dev: the usual nodes, a private devpts, and /dev/net/tun open to every user (DeviceAllow and
# the unit's user decide who may use it).
mount -t tmpfs -o mode=0755,nosuid,noexec,size=4m sdlab-dev "$R/dev"
mknod -m 0666 "$R/dev/null" c 1 3
mknod -m 0666 "$R/dev/zero" c 1 5
mknod -m 0666 "$R/dev/full" c 1 7
mknod -m 0666 "$R/dev/random" c 1 8
mknod -m 0666 "$R/dev/urandom" c 1 9
mknod -m 0666 "$R/dev/tty" c 5 0
mkdir -m 0755 "$R/dev/net" "$R/dev/pts"
mknod -m 0666 "$R/dev/net/tun" c 10 200
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 sdlab-devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mkdir -m 1777 "$R/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev sdlab-shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
# The console is the pty systemdlab reads (this script's stdin).
touch "$R/dev/console"
mount --bind /proc/self/fd/0 "$R/dev/console"

# /proc of the new pid namespace; /proc/sys read-only except the namespaced net part, so nothing
# in the machine (systemd-sysctl, a package's postinst) can change the host kernel's settings.
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,rw "$R/proc/sys/net"
if [ -e "$R/proc/sysrq-trigger" ]; then
	mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
	mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi

# /sys of the new net namespace, read-only (systemd mounts its cgroup tree on it); a read-only
# /sys is also what keeps udev and friends from running.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"

mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m sdlab-run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=256m sdlab-tmp "$R/tmp"

hostname "$SDLAB_NAME"

mkdir "$R/run/sdlab-oldroot"
cd "$R"
pivot_root . run/sdlab-oldroot
cd /
umount -l /run/sdlab-oldroot
rmdir /run/sdlab-oldroot

# container= tells systemd it runs in a container (systemd.io/CONTAINER_INTERFACE): it skips
# what only a real machine does and honours ConditionVirtualization=.
exec env -i container=cvpn-systemdlab \
	/lib/systemd/systemd --unit="$SDLAB_TARGET" --show-status=no --log-color=no
