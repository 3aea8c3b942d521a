// Command etcd is etcd's server, built from go.etcd.io/etcd/server/v3 at the version the
// Kubernetes release in go.mod was tested with: etcd's own main package lives in a module
// (go.etcd.io/etcd/v3) whose requirements clash with Kubernetes', its server package does not.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
