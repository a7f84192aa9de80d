package config

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, and that every failure
// is a list of ValidationErrors with sane lines.
func FuzzParse(f *testing.F) {
	good, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(base))
	f.Add([]byte(base + nodeA))
	f.Add([]byte(dirBase + "  mfa: {challenge: dynamic}\nclient_connect_handler: {url: \"https://h.example.com/\"}\n"))
	f.Add([]byte("tun: {mtu: 1400\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("routes: [{destination_cidr_block: 10.0.1.1/24}, ~, []]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ep, err := Parse(data, "testdata")
		if err == nil {
			if ep == nil {
				t.Fatal("Parse returned neither an endpoint nor an error")
			}
			return
		}
		if ep != nil {
			t.Fatal("Parse returned an endpoint and an error")
		}
		// YAML breaks lines at LF, CRLF and a lone CR alike.
		lines := strings.Count(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") +
			strings.Count(strings.ReplaceAll(string(data), "\r\n", "\n"), "\r") + 2
		errs := []error{err}
		if u, ok := err.(interface{ Unwrap() []error }); ok {
			errs = u.Unwrap()
		}
		for _, e := range errs {
			var ve *ValidationError
			if !errors.As(e, &ve) {
				t.Fatalf("%v is not a *ValidationError", e)
			}
			if ve.Line < 0 || ve.Line > lines {
				t.Fatalf("line %d outside the %d-line input: %v", ve.Line, lines, ve)
			}
		}
	})
}

// FuzzParseWithCluster checks that no pushed file makes ParseWithCluster panic, that a file it
// accepts runs with the local cluster section whatever section the file had, and that every
// problem outside that section has a line of the pushed file.
func FuzzParseWithCluster(f *testing.F) {
	local, err := Parse([]byte(base+nodeA), "testdata")
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(base))
	f.Add([]byte(base + nodeB))
	f.Add([]byte(base + "cluster: [1]\ncluster: ~\n"))
	f.Add([]byte("- cluster\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ep, err := ParseWithCluster(data, "pushed", "testdata", local)
		if err == nil {
			if ep == nil || ep.Cluster == nil || ep.Cluster.NodeName != local.Cluster.NodeName || ep.TargetNetwork.SNATAddress != local.Cluster.SNATAddress {
				t.Fatalf("accepted without the local cluster section: %+v", ep)
			}
			return
		}
		lines := strings.Count(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") +
			strings.Count(strings.ReplaceAll(string(data), "\r\n", "\n"), "\r") + 2
		errs := []error{err}
		if u, ok := err.(interface{ Unwrap() []error }); ok {
			errs = u.Unwrap()
		}
		for _, e := range errs {
			var ve *ValidationError
			if !errors.As(e, &ve) {
				t.Fatalf("%v is not a *ValidationError", e)
			}
			if ve.File == "pushed" && (ve.Line < 0 || ve.Line > lines) {
				t.Fatalf("line %d outside the %d-line input: %v", ve.Line, lines, ve)
			}
		}
	})
}
