package endpoint

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// TestAdminServed: a started endpoint serves the admin API on admin.socket, describing itself
// from the file in force (a reload shows), and Run removes the socket when it returns.
func TestAdminServed(t *testing.T) {
	l := newLab(t)
	l.start()
	sock := filepath.Join(l.dir, "admin.sock")
	c := admin.NewClient(sock)
	ctx := context.Background()
	out, err := c.DescribeClientVpnEndpoints(ctx, admin.DescribeClientVpnEndpointsInput{})
	if err != nil {
		t.Fatal(err)
	}
	e := out.ClientVpnEndpoints[0]
	if e.ClientVpnEndpointID != endpointID(l.run.Endpoint().Config) || !strings.HasPrefix(e.ClientVpnEndpointID, "cvpn-endpoint-") ||
		e.ClientCidrBlock != "10.2.0.0/22" || len(e.Cvpn.Listeners) != 1 || e.Cvpn.Listeners[0].Protocol != "udp" ||
		e.Cvpn.Pool.Capacity != 1021 || e.Cvpn.ActiveConnections != 0 {
		t.Errorf("endpoint %+v", e)
	}
	l.writeFile("endpoint.yaml", []byte(baseFile+"description: reloaded\n"))
	if _, err := l.run.Reload(l.path); err != nil {
		t.Fatal(err)
	}
	if out, err = c.DescribeClientVpnEndpoints(ctx, admin.DescribeClientVpnEndpointsInput{}); err != nil || out.ClientVpnEndpoints[0].Description != "reloaded" {
		t.Errorf("after reload: %+v %v", out, err)
	}
	conns, err := c.DescribeClientVpnConnections(ctx, admin.DescribeClientVpnConnectionsInput{})
	if err != nil || conns.Connections == nil || len(conns.Connections) != 0 {
		t.Errorf("connections %+v %v", conns, err)
	}
	l.run.Stop()
	<-l.done
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket outlived Run: %v", err)
	}
}

// TestAdminSocketInUse: an admin.socket another process serves fails Start, naming the key,
// and the host state is removed again.
func TestAdminSocketInUse(t *testing.T) {
	l := newLab(t)
	taken, err := net.Listen("unix", filepath.Join(l.dir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ep, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	_, err = Start(ep, Options{Host: func(host.Config, *slog.Logger) (Host, error) { return h, nil }, Network: socktest.NewNetwork()})
	if err == nil || !strings.Contains(err.Error(), "admin.socket") || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Start = %v, want admin.socket named as in use", err)
	}
	select {
	case <-h.closed:
	default:
		t.Error("a failed Start left the host state")
	}
}
