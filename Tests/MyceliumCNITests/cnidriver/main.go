// cnidriver: a minimal container runtime for tests, driving a CNI plugin through libcni exactly as
// podman/containerd do. Debian's libcni (1.1.x) speaks spec up to 1.0.0 and has no GC/STATUS, so those two
// verbs (spec 1.1) are sent with libcni's own invoke package, the way libcni 1.2 sends them.
//
// Build (offline): GO111MODULE=off GOPATH=/usr/share/gocode go build -o cnidriver .
//
// Usage: cnidriver -op add|check|del|gc|status|version -conflist FILE -path DIR[:DIR] -cache DIR
//                  [-id ID -netns PATH -ifname IF] [-valid ID/IF,ID/IF]
// add prints the result JSON; failures print the error and exit 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	op := flag.String("op", "", "add, check, del, gc, status or version")
	conflist := flag.String("conflist", "", "network configuration list file")
	path := flag.String("path", "", "CNI_PATH")
	cache := flag.String("cache", "", "libcni cache directory")
	id := flag.String("id", "", "container ID")
	netns := flag.String("netns", "", "netns path")
	ifname := flag.String("ifname", "eth0", "interface name")
	valid := flag.String("valid", "", "GC: still valid attachments, ID/IF comma separated")
	flag.Parse()

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		die("load %s: %v", *conflist, err)
	}
	paths := strings.Split(*path, ":")
	cni := libcni.NewCNIConfigWithCacheDir(paths, *cache, nil)
	rt := &libcni.RuntimeConf{ContainerID: *id, NetNS: *netns, IfName: *ifname}
	ctx := context.Background()

	switch *op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			die("ADD: %v", err)
		}
		out, _ := json.Marshal(res)
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			die("CHECK: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			die("DEL: %v", err)
		}
	case "version":
		for _, p := range list.Plugins {
			info, err := cni.GetVersionInfo(ctx, p.Network.Type)
			if err != nil {
				die("VERSION: %v", err)
			}
			fmt.Println(strings.Join(info.SupportedVersions(), " "))
		}
	case "gc", "status":
		for _, p := range list.Plugins {
			var conf map[string]interface{}
			if err := json.Unmarshal(p.Bytes, &conf); err != nil {
				die("plugin config: %v", err)
			}
			conf["name"] = list.Name
			conf["cniVersion"] = "1.1.0"
			if *op == "gc" {
				atts := []map[string]string{}
				for _, a := range strings.Split(*valid, ",") {
					if a == "" {
						continue
					}
					parts := strings.SplitN(a, "/", 2)
					atts = append(atts, map[string]string{"containerID": parts[0], "ifname": parts[1]})
				}
				conf["cni.dev/valid-attachments"] = atts
			}
			raw, _ := json.Marshal(conf)
			plugin, err := invoke.FindInPath(p.Network.Type, paths)
			if err != nil {
				die("find %s: %v", p.Network.Type, err)
			}
			args := &invoke.Args{Command: strings.ToUpper(*op), Path: *path}
			if err := invoke.ExecPluginWithoutResult(ctx, plugin, raw, args, nil); err != nil {
				die("%s: %v", strings.ToUpper(*op), err)
			}
		}
	default:
		die("unknown -op %q", *op)
	}
}
