package privdrop

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
)

// ErrNotRoot is the cause when a process that is not root is asked to drop to another user.
var ErrNotRoot = errors.New("only root can change to another user")

// ErrCgo is the cause when this binary cannot change every thread's credentials (Supported).
var ErrCgo = errors.New("this binary is built with cgo, where Go cannot change the capabilities of every thread; build it with CGO_ENABLED=0")

// Target is whom the process becomes and what it keeps.
type Target struct {
	User     string // as asked, for messages
	UID, GID int
	// Groups are the supplementary groups: the user's groups and GID, as initgroups(3) and
	// systemd's User= give them.
	Groups []int
	// Keep are the capabilities that stay permitted and effective; all others go, from the
	// bounding set too.
	Keep Set
}

// Lookup finds userName (a name, or a number) and groupName ("" means the user's primary group)
// in the user database, and returns the Target that keeps keep.
func Lookup(userName, groupName string, keep Set) (Target, error) {
	u, err := lookupUser(userName)
	if err != nil {
		return Target{}, err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return Target{}, fmt.Errorf("user %q: uid %q is not a number", userName, u.Uid)
	}
	if uid == 0 {
		return Target{}, fmt.Errorf("user %q is root (uid 0): name an unprivileged user", userName)
	}
	gidText := u.Gid
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return Target{}, err
		}
		gidText = g.Gid
	}
	gid, err := strconv.Atoi(gidText)
	if err != nil {
		return Target{}, fmt.Errorf("group of user %q: gid %q is not a number", userName, gidText)
	}
	groups := []int{gid}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil && !slices.Contains(groups, g) {
				groups = append(groups, g)
			}
		}
	}
	return Target{User: userName, UID: uid, GID: gid, Groups: groups, Keep: keep}, nil
}

// lookupUser finds a user by name, or by number when the name is one.
func lookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err == nil {
		return u, nil
	}
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
	}
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return nil, fmt.Errorf("no user %q in the user database (create it: useradd --system --no-create-home --shell /usr/sbin/nologin %s)", name, name)
	}
	return nil, fmt.Errorf("user %q: %w", name, err)
}

// lookupGroup finds a group by name, or by number when the name is one.
func lookupGroup(name string) (*user.Group, error) {
	g, err := user.LookupGroup(name)
	if err == nil {
		return g, nil
	}
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		if g, err := user.LookupGroupId(name); err == nil {
			return g, nil
		}
	}
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return nil, fmt.Errorf("no group %q in the group database", name)
	}
	return nil, fmt.Errorf("group %q: %w", name, err)
}
