package host

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stickynet/stickynet/internal/testenv"
)

// TestNetnsSysctlsAndUplink: sysctls given to NewNetns hold in the new
// namespace only, a sysctl that does not exist fails with its name and
// leaves no namespace file, and an uplink's host end comes up without IPv6.
func TestNetnsSysctlsAndUplink(t *testing.T) {
	testenv.Root(t)
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Fatalf("this kernel has no IPv6 sysctls to test with: %v", err)
	}
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	// read reads a net sysctl in the namespace at nsPath ("": the host's).
	read := func(nsPath, key string) string {
		t.Helper()
		path := filepath.Join("/proc/sys/net", key)
		var out []byte
		var err error
		if nsPath == "" {
			out, err = os.ReadFile(path)
		} else {
			out, err = h.RunIn(ctx, nsPath, "cat", path)
		}
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}

	hostDefault := read("", "ipv6/conf/default/disable_ipv6")
	plain, fabric := filepath.Join(dir, "plain"), filepath.Join(dir, "fabric")
	if err := h.NewNetns(plain); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DeleteNetns(plain) })
	if err := h.NewNetns(fabric, FabricSysctls...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DeleteNetns(fabric) })
	for _, sc := range FabricSysctls {
		if got := read(fabric, sc.Key); got != sc.Value {
			t.Errorf("%s in the namespace made with it = %q; want %q", sc.Key, got, sc.Value)
		}
		if got := read(plain, sc.Key); got != "0" {
			t.Errorf("%s in a namespace made without it = %q; want the kernel's default 0", sc.Key, got)
		}
	}
	if got := read("", "ipv6/conf/default/disable_ipv6"); got != hostDefault {
		t.Errorf("the host's ipv6 default changed from %q to %q", hostDefault, got)
	}

	bad := filepath.Join(dir, "bad")
	err = h.NewNetns(bad, Sysctl{Key: "ipv4/no_such_sysctl", Value: "1"})
	if err == nil || !strings.Contains(err.Error(), "net.ipv4.no_such_sysctl=1") {
		t.Errorf("NewNetns with an unknown sysctl: err = %v; want one naming net.ipv4.no_such_sysctl=1", err)
	}
	if _, serr := os.Lstat(bad); serr == nil {
		t.Errorf("a failed NewNetns left %s behind", bad)
		_ = h.DeleteNetns(bad)
	}

	br := fmt.Sprintf("nt%d-br", os.Getpid()%100000)
	if err := h.AddBridge(br, netip.MustParsePrefix("198.18.251.1/30")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DeleteLink(br) })
	up := fmt.Sprintf("nt%d-up", os.Getpid()%100000)
	if err := h.AddUplink(br, up, plain, "uplink"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DeleteLink(up) })
	if got := read("", "ipv6/conf/"+up+"/disable_ipv6"); got != "1" {
		t.Errorf("uplink %s (host end) disable_ipv6 = %q; want 1", up, got)
	}
	if got := read(plain, "ipv6/conf/uplink/disable_ipv6"); got != "0" {
		t.Errorf("uplink's namespace end disable_ipv6 = %q; want 0 (the namespace's own choice)", got)
	}
}
