// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3),
// built through this wrapper module exactly like etcd's own main.go does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
