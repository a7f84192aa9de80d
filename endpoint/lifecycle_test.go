package endpoint

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// lifecycleRecorder records what a Lifecycle hears; Started also records whether the listeners
// were bound by then.
type lifecycleRecorder struct {
	mu     sync.Mutex
	events []string
	heard  chan string
}

func (r *lifecycleRecorder) add(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	r.heard <- ev
}

func (r *lifecycleRecorder) Started(run *Running) {
	if len(run.Server().Addrs()) == 0 {
		r.add("started without listeners")
		return
	}
	r.add("started")
}
func (r *lifecycleRecorder) Reloading() { r.add("reloading") }
func (r *lifecycleRecorder) Reloaded()  { r.add("reloaded") }
func (r *lifecycleRecorder) Stopping()  { r.add("stopping") }

// TestServeTellsLifecycle: Serve tells its Lifecycle that the endpoint started (with its
// listeners bound), that each reload begins and ends, and that it stops, in that order.
func TestServeTellsLifecycle(t *testing.T) {
	l := newLab(t)
	ep, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	rec := &lifecycleRecorder{heard: make(chan string, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, l.path, ep, reload, Options{
			Log:       slog.New(slog.NewTextHandler(l.logs, nil)),
			Host:      func(host.Config, *slog.Logger) (Host, error) { return h, nil },
			Network:   socktest.NewNetwork(),
			Lifecycle: rec,
		})
	}()
	wait := func(want string) {
		t.Helper()
		select {
		case got := <-rec.heard:
			if got != want {
				t.Fatalf("heard %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q never heard", want)
		}
	}
	wait("started")
	l.writeFile("endpoint.yaml", []byte(baseFile+"description: reloaded\n"))
	reload <- struct{}{}
	wait("reloading")
	wait("reloaded")
	l.writeFile("endpoint.yaml", []byte("not: an endpoint\n")) // refused: still begins and ends
	reload <- struct{}{}
	wait("reloading")
	wait("reloaded")
	cancel()
	wait("stopping")
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if want := []string{"started", "reloading", "reloaded", "reloading", "reloaded", "stopping"}; !slices.Equal(rec.events, want) {
		t.Errorf("heard %q, want %q", rec.events, want)
	}
}
