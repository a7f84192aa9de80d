//go:build !race

package socktest

const raceEnabled = false
