// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3), built from the version
// go.mod names so that tests run the cluster members the client library was released with.
// Only tests use it (internal/etcdlab builds and starts it); deployments run their own etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
