package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
)

// TestAllocations: the webhook's Unix socket (mode 0600, replacing a stale
// one, removed when done) lists each address with its state as IPPool
// status counts it (allocated, held, cooling), filtered, once the cache is
// loaded; and the allocations command prints it as a table or JSON,
// refusing bad filters by name.
func TestAllocations(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	alloc := ipam.New(store.NewMemory(), ipam.Options{})
	if err := alloc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pool, err := alloc.LearnPool("blue", v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	allocate := func(req ipam.Request) ipam.Allocation {
		t.Helper()
		req.Pool = pool
		al, err := alloc.Allocate(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return al
	}
	running := allocate(ipam.Request{Identity: "statefulset/db/web/0", Pod: "db/web-0"})
	creating := allocate(ipam.Request{Identity: "deployment/app/api", Shared: true, Token: "tok-1"})
	held := allocate(ipam.Request{Identity: "statefulset/db/web/1", Pod: "db/web-1"})
	if err := alloc.Unbind(ctx, "blue", held.IP, "db/web-1"); err != nil {
		t.Fatal(err)
	}
	freed := allocate(ipam.Request{Identity: "pod/app/once", Pod: "app/once"})
	if err := alloc.Unbind(ctx, "blue", freed.IP, "app/once"); err != nil {
		t.Fatal(err)
	}
	if _, err := alloc.Release(ctx, "blue", freed.IP, "pod/app/once", false); err != nil {
		t.Fatal(err)
	}

	ready := make(chan struct{})
	socket := filepath.Join(t.TempDir(), "allocations.sock")
	if err := os.WriteFile(socket, nil, 0o600); err != nil { // a plain file there is not replaced
		t.Fatal(err)
	}
	srv := allocationsServer{path: socket, handler: allocationsHandler(alloc, ready)}
	if err := srv.Start(ctx); err == nil || !strings.Contains(err.Error(), "--allocations-socket") {
		t.Fatalf("serving over a plain file: %v; want an error naming the flag", err)
	}
	if err := os.Remove(socket); err != nil {
		t.Fatal(err)
	}
	// A socket a previous run left is replaced.
	if ln, err := net.Listen("unix", socket); err != nil {
		t.Fatal(err)
	} else {
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Start(sctx) }()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	get := func(query string) (int, string) {
		t.Helper()
		var resp *http.Response
		var err error
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) { // until it listens
			if resp, err = client.Get("http://webhook" + allocationsPath + query); err == nil || time.Now().After(end) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if code, body := get(""); code != http.StatusServiceUnavailable || !strings.Contains(body, "not loaded") {
		t.Errorf("before the cache is loaded: %d %q; want 503", code, body)
	}
	close(ready)

	list := func(query string) map[string]Allocation {
		t.Helper()
		code, body := get(query)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", query, code, body)
		}
		var as []Allocation
		if err := json.Unmarshal([]byte(body), &as); err != nil {
			t.Fatal(err)
		}
		out := map[string]Allocation{}
		for _, a := range as {
			out[a.IP] = a
		}
		return out
	}
	all := list("")
	want := map[string]struct{ state, identity, pod, mac string }{
		running.IP.String():  {ipam.StateAllocated, "statefulset/db/web/0", "db/web-0", running.MAC.String()},
		creating.IP.String(): {ipam.StateAllocated, "deployment/app/api", "", creating.MAC.String()},
		held.IP.String():     {ipam.StateHeld, "statefulset/db/web/1", "", held.MAC.String()},
		freed.IP.String():    {ipam.StateCooling, "pod/app/once", "", freed.MAC.String()},
	}
	if len(all) != len(want) {
		t.Errorf("all addresses: %+v; want %d", all, len(want))
	}
	for ip, w := range want {
		a := all[ip]
		if a.State != w.state || a.Identity != w.identity || a.Pod != w.pod || a.MAC != w.mac || a.Pool != "blue" || time.Since(a.Since) > time.Minute {
			t.Errorf("%s: %+v; want %+v in pool blue, since a moment ago", ip, a, w)
		}
	}
	for query, ips := range map[string][]string{
		"?identity=statefulset/db/web/": {running.IP.String(), held.IP.String()},
		"?state=held":                   {held.IP.String()},
		"?ip=" + creating.IP.String():   {creating.IP.String()},
		"?pool=red":                     nil,
	} {
		got := list(query)
		if len(got) != len(ips) {
			t.Errorf("%s: %v; want %v", query, got, ips)
		}
		for _, ip := range ips {
			if _, ok := got[ip]; !ok {
				t.Errorf("%s: %v lacks %s", query, got, ip)
			}
		}
	}
	if code, body := get("?ip=10.30.0"); code != http.StatusBadRequest || !strings.Contains(body, `ip="10.30.0": not an IP address`) {
		t.Errorf("a bad ip: %d %q; want 400 naming it", code, body)
	}

	// Only the webhook's user may connect.
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %v, %v; want mode 0600", fi, err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := AllocationsCommand(ctx, append([]string{"--socket", socket}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	code, out, errOut := run("--identity", "statefulset/db/")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "POOL") ||
		!strings.Contains(out, held.IP.String()) || !strings.Contains(out, "db/web-0") || !strings.Contains(out, "<none>") {
		t.Errorf("table: code %d\n%s%s; want a header and the two ordinals", code, out, errOut)
	}
	code, out, _ = run("-o", "json", "--state", "cooling")
	var as []Allocation
	if err := json.Unmarshal([]byte(out), &as); code != 0 || err != nil || len(as) != 1 || as[0].IP != freed.IP.String() {
		t.Errorf("json: code %d, %v, %q; want the cooling address", code, err, out)
	}
	if code, out, errOut := run("--pool", "red"); code != 0 || out != "" || !strings.Contains(errOut, "No addresses match") {
		t.Errorf("nothing matching: code %d, %q, %q", code, out, errOut)
	}
	for _, bad := range [][]string{{"--state", "free"}, {"-o", "yaml"}, {"10.30.0.5"}} {
		if code, _, errOut := run(bad...); code != 2 || !strings.Contains(errOut, bad[len(bad)-1]) {
			t.Errorf("%v: code %d, %q; want 2 naming %q", bad, code, errOut, bad[len(bad)-1])
		}
	}
	stop()
	if err := <-served; err != nil {
		t.Errorf("serving stopped with %v", err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left after serving stopped: %v", err)
	}
	if code, _, errOut := run(); code != 1 || !strings.Contains(errOut, "no answer from the webhook on "+socket) {
		t.Errorf("no webhook: code %d, %q", code, errOut)
	}
}
