package app

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/stickynet/stickynet/internal/ipam"
)

// AllocationsPath is where the metrics endpoint lists the addresses in
// stickynet's state, for `stickynet-webhook allocations`.
const AllocationsPath = "/allocations"

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
// It answers only a client on the pod's loopback (kubectl exec, or
// port-forward, each gated by RBAC): the metrics port is open to the
// cluster network, and the list names every workload's addresses. Until
// the cache is loaded (ready closed) it answers 503.
func allocationsHandler(alloc *ipam.Allocator, ready <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "only GET", http.StatusMethodNotAllowed)
			return
		}
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if a, err := netip.ParseAddr(host); err != nil || !a.Unmap().IsLoopback() {
			http.Error(w, AllocationsPath+" answers only from inside the webhook's pod (kubectl exec <pod> -- stickynet-webhook allocations): it names every workload's addresses", http.StatusForbidden)
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

// AllocationsCommand is `stickynet-webhook allocations`: it asks the webhook
// in the same pod, on its metrics endpoint, for the addresses in
// stickynet's state and prints them as a table, or as JSON. It returns the
// process's exit code.
func AllocationsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("stickynet-webhook allocations", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("metrics-address", "127.0.0.1:8080", "the webhook's metrics endpoint (its --metrics-bind-address), on this pod's loopback")
	pool := fs.String("pool", "", "only addresses of this IPPool")
	ip := fs.String("ip", "", "only this address")
	identity := fs.String("identity", "", "only identities that begin with this, such as statefulset/<namespace>/<name>/")
	state := fs.String("state", "", "only addresses in this state: "+strings.Join(states, ", "))
	output := fs.String("o", "table", "output: table or json")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the answer")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: stickynet-webhook allocations [flags]\n\nLists the addresses in stickynet's state (from the webhook's cache), with who has them:\nallocated (a live pod carries it, or one being created), held (a sticky identity without a\nlive pod) or cooling (freed, waiting out the pool's reuse delay). Run it in the webhook's\npod: kubectl -n <namespace> exec deploy/stickynet-webhook -- stickynet-webhook allocations\n\nFlags:\n")
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
	list, err := getAllocations(ctx, *addr, q, *timeout)
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

// getAllocations asks the metrics endpoint at addr for the addresses that
// match query q.
func getAllocations(ctx context.Context, addr string, q url.Values, timeout time.Duration) ([]Allocation, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := url.URL{Scheme: "http", Host: addr, Path: AllocationsPath, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("--metrics-address %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("no answer from the webhook's metrics endpoint at %s (--metrics-address; run this in the webhook's pod, where it serves on its --metrics-bind-address): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("read the answer of %s: %w", u.String(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", u.String(), resp.Status, strings.TrimSpace(string(body)))
	}
	var list []Allocation
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("%s answered what is not a list of addresses: %w", u.String(), err)
	}
	return list, nil
}
