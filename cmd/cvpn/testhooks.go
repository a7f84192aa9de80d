//go:build !testhooks

package main

import "log/slog"

// armTestHooks arms nothing: only a build with the testhooks tag has test hooks
// (testhooks_on.go).
func armTestHooks(*slog.Logger) {}
