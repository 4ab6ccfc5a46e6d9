package app

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/stickynet/stickynet/internal/ipam"
)

// DefaultAllocationsSocket is where the chart has the webhook serve the
// address list (--allocations-socket), and where `stickynet-webhook
// allocations` asks by default.
const DefaultAllocationsSocket = "/run/stickynet/allocations.sock"

const allocationsPath = "/allocations"

// Allocation is one address in stickynet's state, as GET /allocations
// lists it.
type Allocation struct {
	Pool     string    `json:"pool"`
	IP       string    `json:"ip"`
	MAC      string    `json:"mac"`
	State    string    `json:"state"` // allocated, held or cooling (as IPPool status counts)
	Identity string    `json:"identity"`
	Pod      string    `json:"pod,omitempty"` // namespace/name of the pod it is bound to
	Since    time.Time `json:"since"`         // last change of its state
}

// allocationFilter selects addresses; each field set must match.
type allocationFilter struct {
	pool     string
	ip       netip.Addr
	identity string // a prefix: statefulset/db/web/ for all of a StatefulSet's ordinals
	state    string
}

var states = []string{ipam.StateAllocated, ipam.StateHeld, ipam.StateCooling}

// parseAllocationFilter reads the filter from a query, naming what is wrong.
func parseAllocationFilter(q url.Values) (allocationFilter, error) {
	f := allocationFilter{pool: q.Get("pool"), identity: q.Get("identity"), state: q.Get("state")}
	if v := q.Get("ip"); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return f, fmt.Errorf("ip=%q: not an IP address (such as 10.0.0.5 or fd00::5)", v)
		}
		f.ip = ip.Unmap()
	}
	if f.state != "" && !slices.Contains(states, f.state) {
		return f, fmt.Errorf("state=%q: accepted are %s", f.state, strings.Join(states, ", "))
	}
	return f, nil
}

func (f allocationFilter) match(e ipam.Entry) bool {
	return (f.pool == "" || e.Pool == f.pool) && (!f.ip.IsValid() || e.IP == f.ip) &&
		strings.HasPrefix(e.Identity, f.identity) && (f.state == "" || e.State() == f.state)
}

// allocationsHandler serves GET /allocations: the addresses in this
// replica's cache of stickynet's state (every replica caches all of it),
// filtered by the query's pool, ip, identity (a prefix) and state, as JSON.
// Until the cache is loaded (ready closed) it answers 503.
func allocationsHandler(alloc *ipam.Allocator, ready <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != allocationsPath {
			http.Error(w, "only GET "+allocationsPath, http.StatusNotFound)
			return
		}
		select {
		case <-ready:
		default:
			http.Error(w, "the webhook has not loaded stickynet's state from etcd yet", http.StatusServiceUnavailable)
			return
		}
		f, err := parseAllocationFilter(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := []Allocation{}
		for _, e := range alloc.List(f.match) {
			out = append(out, Allocation{
				Pool: e.Pool, IP: e.IP.String(), MAC: e.MAC.String(), State: e.State(),
				Identity: e.Identity, Pod: e.Pod, Since: e.Since.UTC(),
			})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}

// allocationsServer serves allocationsHandler on a Unix socket, made
// readable by the webhook's own user only: the list names every workload's
// addresses, so only a process in the webhook's container (kubectl exec,
// which RBAC gates) may ask. A TCP port, even on loopback, would be open to
// a service mesh's sidecar, which forwards the cluster's traffic from there.
type allocationsServer struct {
	path    string
	handler http.Handler
}

// Start serves until ctx ends, replacing a socket a previous run left (a
// container restarted in the same pod keeps its emptyDir), and removes it
// when done.
func (s allocationsServer) Start(ctx context.Context) error {
	if fi, err := os.Lstat(s.path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(s.path)
	}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		return fmt.Errorf("--allocations-socket %q: %w", s.path, err)
	}
	defer os.Remove(s.path)
	if err := os.Chmod(s.path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("--allocations-socket %q: %w", s.path, err)
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve the address list on %s: %w", s.path, err)
	}
	return nil
}

// NeedLeaderElection: every replica answers for its own cache.
func (allocationsServer) NeedLeaderElection() bool { return false }

// AllocationsCommand is `stickynet-webhook allocations`: it asks the webhook
// in the same container, on its --allocations-socket, for the addresses in
// stickynet's state and prints them as a table, or as JSON. It returns the
// process's exit code.
func AllocationsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("stickynet-webhook allocations", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", DefaultAllocationsSocket, "the webhook's --allocations-socket")
	pool := fs.String("pool", "", "only addresses of this IPPool")
	ip := fs.String("ip", "", "only this address")
	identity := fs.String("identity", "", "only identities that begin with this, such as statefulset/<namespace>/<name>/")
	state := fs.String("state", "", "only addresses in this state: "+strings.Join(states, ", "))
	output := fs.String("o", "table", "output: table or json")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the answer")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: stickynet-webhook allocations [flags]\n\nLists the addresses in stickynet's state (from the webhook's cache), with who has them:\nallocated (a live pod carries it, or one being created), held (a sticky identity without a\nlive pod) or cooling (freed, waiting out the pool's reuse delay). Run it in the webhook's\ncontainer: kubectl -n <namespace> exec deploy/stickynet-webhook -- /usr/local/bin/stickynet-webhook allocations\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "stickynet-webhook allocations: unexpected argument %q; filters are flags (--pool, --ip, --identity, --state)\n", fs.Arg(0))
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "stickynet-webhook allocations: -o %q: accepted are table and json\n", *output)
		return 2
	}
	q := url.Values{}
	for k, v := range map[string]string{"pool": *pool, "ip": *ip, "identity": *identity, "state": *state} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if _, err := parseAllocationFilter(q); err != nil { // before asking: the same words
		fmt.Fprintf(stderr, "stickynet-webhook allocations: --%s\n", err)
		return 2
	}
	list, err := getAllocations(ctx, *socket, q, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "stickynet-webhook allocations: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(list); err != nil {
			fmt.Fprintf(stderr, "stickynet-webhook allocations: %v\n", err)
			return 1
		}
		return 0
	}
	if len(list) == 0 {
		fmt.Fprintln(stderr, "No addresses match.")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tIP\tMAC\tSTATE\tIDENTITY\tPOD\tSINCE")
	now := time.Now()
	for _, a := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Pool, a.IP, a.MAC, a.State, a.Identity, cmp.Or(a.Pod, "<none>"), duration.HumanDuration(now.Sub(a.Since)))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "stickynet-webhook allocations: %v\n", err)
		return 1
	}
	return 0
}

// getAllocations asks the webhook on socket for the addresses that match
// query q.
func getAllocations(ctx context.Context, socket string, q url.Values, timeout time.Duration) ([]Allocation, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	u := url.URL{Scheme: "http", Host: "webhook", Path: allocationsPath, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("no answer from the webhook on %s (--socket; run this in the webhook's container, which serves there when started with --allocations-socket, as the chart does): %w", socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("read the webhook's answer on %s: %w", socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the webhook on %s: %s: %s", socket, resp.Status, strings.TrimSpace(string(body)))
	}
	var list []Allocation
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("the webhook on %s answered what is not a list of addresses: %w", socket, err)
	}
	return list, nil
}
