package main

import "github.com/cvpn/cvpn/endpoint"

// loadEndpoint loads the endpoint file and every file it names at the commands' clock
// (package endpoint checks them).
func loadEndpoint(path string) (*endpoint.Endpoint, error) {
	return endpoint.Load(path, timeNow())
}
