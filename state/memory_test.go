package state_test

import (
	"testing"

	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/state/statetest"
)

func TestMemoryConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store { return state.NewMemory() })
}
