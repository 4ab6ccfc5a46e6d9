// Package ovs drives Open vSwitch for the node agent through the ovs-vsctl and
// ovs-ofctl commands (no OVSDB client library is available here): the bridge
// and its uplink, pod ports with their VLAN tag, external_ids and policing,
// and the OpenFlow meters and flows that limit a pod's egress. Commands run
// through a runner held by the Client; the argument builders and output
// parsers are pure functions.
package ovs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runner runs a command with stdin (nil: none) and returns its standard
// output; a failure carries the command's standard error.
type runner interface {
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// ExecRunner runs commands as child processes.
type ExecRunner struct{}

// Run runs name with args and returns its standard output.
func (ExecRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Datapath types of a bridge.
const (
	DatapathNetdev = "netdev" // userspace datapath
	DatapathSystem = "system" // kernel module
)

// Config says how to reach Open vSwitch.
type Config struct {
	// Vsctl and Ofctl are the command paths; empty means "ovs-vsctl" and
	// "ovs-ofctl" from PATH.
	Vsctl, Ofctl string
	// DB is the ovsdb-server socket, such as unix:/var/run/openvswitch/db.sock.
	DB string
	// RunDir is ovs-vswitchd's run folder, where it opens <bridge>.mgmt.
	RunDir string
	// Bridge is the bridge the agent owns.
	Bridge string
	// Timeout bounds each command's wait for ovs-vswitchd (ovs-vsctl --timeout).
	Timeout time.Duration
}

// Client runs ovs-vsctl and ovs-ofctl against one bridge.
type Client struct {
	cfg Config
	run runner
}

// New returns a client that runs commands through r.
func New(cfg Config, r runner) *Client {
	if cfg.Vsctl == "" {
		cfg.Vsctl = "ovs-vsctl"
	}
	if cfg.Ofctl == "" {
		cfg.Ofctl = "ovs-ofctl"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Client{cfg: cfg, run: r}
}

// Bridge returns the bridge's name.
func (c *Client) Bridge() string { return c.cfg.Bridge }

func (c *Client) vsctl(ctx context.Context, args ...string) ([]byte, error) {
	return c.runOVS(ctx, nil, c.cfg.Vsctl, append(vsctlGlobal(c.cfg, c.timeout(ctx)), args...))
}

// ofctl runs ovs-ofctl with the same timeout as ovs-vsctl: without one, a
// hung ovs-vswitchd would block it, and the lock of the pod it works for,
// for good.
func (c *Client) ofctl(ctx context.Context, command string, args ...string) ([]byte, error) {
	return c.ofctlIn(ctx, nil, command, args...)
}

// ofctlIn is ofctl with stdin.
func (c *Client) ofctlIn(ctx context.Context, stdin []byte, command string, args ...string) ([]byte, error) {
	return c.runOVS(ctx, stdin, c.cfg.Ofctl, append([]string{"-O", "OpenFlow13", timeoutArg(c.timeout(ctx)), command, ofTarget(c.cfg)}, args...))
}

// ErrNoAnswer is the error of a command that Open vSwitch did not answer in
// time: ovsdb-server did not, or ovs-vswitchd did not apply the change
// (ovs-vsctl waits for that unless --no-wait) or did not answer OpenFlow.
var ErrNoAnswer = errors.New("no answer from Open vSwitch")

// ErrUnreachable is the error of a command that could not connect to
// ovsdb-server or to the bridge's management socket (the socket missing,
// or refusing: Open vSwitch stopped or restarting). Like ErrNoAnswer, it
// passes once Open vSwitch is back.
var ErrUnreachable = errors.New("cannot reach Open vSwitch")

// unreachable says whether a failed command's message is that of ovs-vsctl
// or ovs-ofctl that could not connect to its socket: "database connection
// failed", "connecting to unix:…/br.mgmt" or "failed to connect to socket",
// for a socket missing or refusing or a peer that hung up (not, say, a
// bridge that does not speak OpenFlow 1.3: "(Protocol error)").
func unreachable(msg string) bool {
	what := strings.Contains(msg, "database connection failed") || strings.Contains(msg, "connecting to ") ||
		strings.Contains(msg, "failed to connect to socket") || strings.Contains(msg, "failed to open socket")
	if !what {
		return false
	}
	for _, why := range []string{"No such file or directory", "Connection refused", "Broken pipe", "Connection reset by peer", "End of file"} {
		if strings.Contains(msg, why) {
			return true
		}
	}
	return false
}

// runOVS runs an OVS command. One that its own --timeout ended (it dies of
// SIGALRM) or that ctx's deadline ended returns ErrNoAnswer with the
// command, saying how long it waited and what to look at.
func (c *Client) runOVS(ctx context.Context, stdin []byte, name string, args []string) ([]byte, error) {
	start := time.Now()
	out, err := c.run.Run(ctx, stdin, name, args...)
	if err == nil {
		return out, nil
	}
	var ee *exec.ExitError
	alarm := false
	if errors.As(err, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		alarm = ok && ws.Signaled() && ws.Signal() == syscall.SIGALRM
	}
	if alarm || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// ovs-vsctl waits for ovsdb-server, and for ovs-vswitchd to apply
		// a change unless --no-wait; ovs-ofctl talks to ovs-vswitchd.
		hint := "is ovs-vswitchd running?"
		if name == c.cfg.Vsctl {
			hint = "is ovs-vswitchd running? ovs-vsctl waits for it to apply each change; or ovsdb-server does not answer"
			if slices.Contains(args, "--no-wait") {
				hint = "ovsdb-server does not answer"
			}
		}
		return out, fmt.Errorf("%w within %s (%s): %s %s",
			ErrNoAnswer, time.Since(start).Round(100*time.Millisecond), hint, filepath.Base(name), strings.Join(args, " "))
	}
	if unreachable(err.Error()) {
		what := "ovs-vswitchd's management socket"
		if name == c.cfg.Vsctl {
			what = "ovsdb-server"
		}
		return out, fmt.Errorf("%w: cannot reach %s (is it running?): %w", ErrUnreachable, what, err)
	}
	return out, err
}

// timeout is how long one command may wait for Open vSwitch: the Config's
// Timeout, but no longer than ctx has left, so that the command's own
// timeout ends it (with ErrNoAnswer) before the caller gives up.
func (c *Client) timeout(ctx context.Context) time.Duration {
	t := c.cfg.Timeout
	if d, ok := ctx.Deadline(); ok {
		t = min(t, time.Until(d))
	}
	return t
}

// vsctlGlobal returns ovs-vsctl's leading options.
func vsctlGlobal(cfg Config, timeout time.Duration) []string {
	out := []string{}
	if cfg.DB != "" {
		out = append(out, "--db="+cfg.DB)
	}
	return append(out, timeoutArg(timeout))
}

// timeoutArg is the --timeout option of ovs-vsctl and ovs-ofctl, in whole
// seconds, rounded down (at least 1).
func timeoutArg(t time.Duration) string {
	return "--timeout=" + strconv.Itoa(max(1, int(t/time.Second)))
}

// ofTarget names the switch for ovs-ofctl: the bridge's management socket in
// the run folder when one is configured, otherwise the bridge name.
func ofTarget(cfg Config) string {
	if cfg.RunDir == "" {
		return cfg.Bridge
	}
	return "unix:" + filepath.Join(cfg.RunDir, cfg.Bridge+".mgmt")
}

// EnsureBridge creates the bridge with datapathType if it does not exist (an
// existing bridge keeps its datapath: changing it would cut every pod off),
// makes sure it speaks OpenFlow 1.3 (meters), and returns its datapath type.
func (c *Client) EnsureBridge(ctx context.Context, datapathType string) (string, error) {
	exists, err := c.BridgeExists(ctx)
	if err != nil {
		return "", err
	}
	if !exists {
		if _, err := c.vsctl(ctx, addBridgeArgs(c.cfg.Bridge, datapathType)...); err != nil {
			return "", fmt.Errorf("create OVS bridge %s: %w", c.cfg.Bridge, err)
		}
	}
	if _, err := c.vsctl(ctx, "set", "Bridge", c.cfg.Bridge, "protocols="+protocols); err != nil {
		return "", fmt.Errorf("set OpenFlow versions of OVS bridge %s: %w", c.cfg.Bridge, err)
	}
	return c.DatapathType(ctx)
}

// protocols are the OpenFlow versions the bridge speaks; meters need 1.3.
const protocols = "OpenFlow10,OpenFlow13,OpenFlow15"

// BridgeExists reports whether the bridge exists.
func (c *Client) BridgeExists(ctx context.Context) (bool, error) {
	_, err := c.vsctl(ctx, "br-exists", c.cfg.Bridge)
	if err == nil {
		return true, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return false, nil
	}
	return false, fmt.Errorf("look up OVS bridge %s (is ovsdb-server running and --ovs-db right?): %w", c.cfg.Bridge, err)
}

// DatapathType returns the bridge's datapath type.
func (c *Client) DatapathType(ctx context.Context) (string, error) {
	out, err := c.vsctl(ctx, "get", "Bridge", c.cfg.Bridge, "datapath_type")
	if err != nil {
		return "", fmt.Errorf("read datapath type of OVS bridge %s: %w", c.cfg.Bridge, err)
	}
	dt := strings.Trim(strings.TrimSpace(string(out)), `"`)
	if dt == "" {
		dt = DatapathSystem
	}
	return dt, nil
}

// addBridgeArgs creates the bridge with its datapath type.
func addBridgeArgs(bridge, datapathType string) []string {
	args := []string{"--", "--may-exist", "add-br", bridge}
	if datapathType != "" {
		args = append(args, "--", "set", "Bridge", bridge, "datapath_type="+datapathType)
	}
	return append(args, "--", "br-set-external-id", bridge, "stickynet-managed", "true")
}

// EnsureUplink adds the uplink interface to the bridge as a trunk port.
func (c *Client) EnsureUplink(ctx context.Context, uplink string) error {
	if _, err := c.vsctl(ctx, "--", "--may-exist", "add-port", c.cfg.Bridge, uplink); err != nil {
		return fmt.Errorf("add uplink %s to OVS bridge %s: %w", uplink, c.cfg.Bridge, err)
	}
	return nil
}

// InterfaceState returns what Open vSwitch reports for an interface of the
// bridge: the error that kept it from setting it up, such as "could not
// open network device eth1 (No such device)", or "" when it works (ovs-vsctl
// add-port reports no such failure: it prints it and exits 0); and the
// interface's MTU (0 when OVS reports none).
func (c *Client) InterfaceState(ctx context.Context, name string) (msg string, mtu int, err error) {
	out, err := c.vsctl(ctx, "--format=json", "--data=json", "--columns=ofport,error,mtu", "list", "Interface", name)
	if err != nil {
		return "", 0, fmt.Errorf("read OVS interface %s: %w", name, err)
	}
	var t table
	if err := json.Unmarshal(out, &t); err != nil {
		return "", 0, fmt.Errorf("decode OVS interface %s: %w", name, err)
	}
	rows := t.rows()
	if len(rows) != 1 {
		return "", 0, fmt.Errorf("OVS interface %s: %d rows", name, len(rows))
	}
	msg, _ = atomString(rows[0]["error"])
	if ofport, _ := atomInt(rows[0]["ofport"]); ofport < 0 && msg == "" {
		msg = "no OpenFlow port number (ofport -1)"
	}
	m, _ := atomInt(rows[0]["mtu"])
	return msg, m, nil
}

// Policing is OVS ingress policing on an interface (traffic the pod sends).
type Policing struct {
	RateKbps   uint64 // 0 turns policing off
	BurstKbits uint64
}

// Port is a pod's port on the bridge.
type Port struct {
	Name        string
	OFPort      int // requested OpenFlow port number
	VLAN        int // access VLAN; 0 untagged
	ExternalIDs map[string]string
	Policing    *Policing // nil leaves policing as it is
}

// AddPort adds (or updates) a pod's port and waits until ovs-vswitchd has it.
func (c *Client) AddPort(ctx context.Context, p Port) error {
	if _, err := c.vsctl(ctx, addPortArgs(c.cfg.Bridge, p)...); err != nil {
		return fmt.Errorf("add port %s to OVS bridge %s: %w", p.Name, c.cfg.Bridge, err)
	}
	return nil
}

// addPortArgs adds the port, tags it and labels its interface.
func addPortArgs(bridge string, p Port) []string {
	args := []string{"--", "--may-exist", "add-port", bridge, p.Name, "--", "set", "Interface", p.Name}
	if p.OFPort > 0 {
		args = append(args, "ofport_request="+strconv.Itoa(p.OFPort))
	}
	keys := make([]string, 0, len(p.ExternalIDs))
	for k := range p.ExternalIDs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "external_ids:"+k+"="+strconv.Quote(p.ExternalIDs[k]))
	}
	if p.Policing != nil {
		args = append(args, policingArgs(*p.Policing)...)
	}
	args = append(args, "--", "set", "Port", p.Name, "vlan_mode=access")
	if p.VLAN > 0 {
		args = append(args, "tag="+strconv.Itoa(p.VLAN))
	} else {
		args = append(args, "tag=[]")
	}
	return args
}

func policingArgs(p Policing) []string {
	return []string{
		"ingress_policing_rate=" + strconv.FormatUint(p.RateKbps, 10),
		"ingress_policing_burst=" + strconv.FormatUint(p.BurstKbits, 10),
	}
}

// SetPolicing sets (or with a zero rate clears) ingress policing on a port.
func (c *Client) SetPolicing(ctx context.Context, port string, p Policing) error {
	if _, err := c.vsctl(ctx, append([]string{"set", "Interface", port}, policingArgs(p)...)...); err != nil {
		return fmt.Errorf("set policing on OVS interface %s: %w", port, err)
	}
	return nil
}

// DelPort removes a port; a missing port is not an error. It does not wait
// for ovs-vswitchd to apply the removal (nothing depends on it, and the
// next change that waits also waits for this one).
func (c *Client) DelPort(ctx context.Context, name string) error {
	if _, err := c.vsctl(ctx, "--no-wait", "--", "--if-exists", "del-port", c.cfg.Bridge, name); err != nil {
		return fmt.Errorf("remove port %s from OVS bridge %s: %w", name, c.cfg.Bridge, err)
	}
	return nil
}

// Ping asks ovs-vswitchd for the bridge's OpenFlow features (ovs-ofctl
// show): it answers on any datapath once it runs the bridge.
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.ofctl(ctx, "show"); err != nil {
		return fmt.Errorf("ovs-vswitchd does not answer on bridge %s: %w", c.cfg.Bridge, err)
	}
	return nil
}

// The marker is a flow in a table no packet reaches (no flow sends packets
// there). ovs-vswitchd keeps flows only in memory: when it restarts, or the
// bridge is made again, the marker is gone, and with it the agent's meters
// and meter flows (and, on the userspace datapath, the root qdiscs of the
// ports it opens again). Its absence tells the agent to put them back.
const (
	markerTable  = 250
	markerCookie = "0x57c4e7"
)

// Mark installs the marker flow (again).
func (c *Client) Mark(ctx context.Context) error {
	flow := fmt.Sprintf("table=%d,priority=0,cookie=%s,actions=drop", markerTable, markerCookie)
	if _, err := c.ofctl(ctx, "add-flow", flow); err != nil {
		return fmt.Errorf("install the marker flow on %s: %w", c.cfg.Bridge, err)
	}
	return nil
}

// Marked reports whether the marker flow is there: false when ovs-vswitchd
// lost its flows since Mark (or the bridge is gone), an error when it does
// not answer.
func (c *Client) Marked(ctx context.Context) (bool, error) {
	out, err := c.ofctl(ctx, "dump-flows", "--no-stats", fmt.Sprintf("table=%d,cookie=%s/-1", markerTable, markerCookie))
	if err == nil {
		return bytes.Contains(out, []byte("cookie="+markerCookie)), nil
	}
	if ok, berr := c.BridgeExists(ctx); berr == nil && !ok {
		return false, nil
	}
	return false, fmt.Errorf("look for the marker flow on %s: %w", c.cfg.Bridge, err)
}

// Interface is an OVS interface as ovs-vsctl lists it.
type Interface struct {
	Name        string
	OFPort      int // -1 when ovs-vswitchd could not open it, 0 when not yet assigned
	ExternalIDs map[string]string
	Policing    Policing
	VLAN        int    // the port's tag (0: none)
	VLANMode    string // the port's vlan_mode
	Error       string
}

// Interfaces lists the interfaces of every bridge with their port's VLAN.
func (c *Client) Interfaces(ctx context.Context) ([]Interface, error) {
	ifOut, err := c.vsctl(ctx, "--format=json", "--data=json",
		"--columns=name,ofport,external_ids,ingress_policing_rate,ingress_policing_burst,error", "list", "Interface")
	if err != nil {
		return nil, fmt.Errorf("list OVS interfaces: %w", err)
	}
	portOut, err := c.vsctl(ctx, "--format=json", "--data=json", "--columns=name,tag,vlan_mode", "list", "Port")
	if err != nil {
		return nil, fmt.Errorf("list OVS ports: %w", err)
	}
	return parseInterfaces(ifOut, portOut)
}

// table is ovs-vsctl's --format=json output.
type table struct {
	Headings []string            `json:"headings"`
	Data     [][]json.RawMessage `json:"data"`
}

func (t table) rows() []map[string]json.RawMessage {
	out := make([]map[string]json.RawMessage, 0, len(t.Data))
	for _, row := range t.Data {
		m := map[string]json.RawMessage{}
		for i, h := range t.Headings {
			if i < len(row) {
				m[h] = row[i]
			}
		}
		out = append(out, m)
	}
	return out
}

// parseInterfaces joins the Interface and Port listings by name.
func parseInterfaces(ifJSON, portJSON []byte) ([]Interface, error) {
	var it, pt table
	if err := json.Unmarshal(ifJSON, &it); err != nil {
		return nil, fmt.Errorf("decode OVS interface list: %w", err)
	}
	if err := json.Unmarshal(portJSON, &pt); err != nil {
		return nil, fmt.Errorf("decode OVS port list: %w", err)
	}
	type portInfo struct {
		tag  int
		mode string
	}
	ports := map[string]portInfo{}
	for _, r := range pt.rows() {
		var name string
		if err := json.Unmarshal(r["name"], &name); err != nil {
			return nil, fmt.Errorf("decode OVS port name: %w", err)
		}
		tag, _ := atomInt(r["tag"])
		mode, _ := atomString(r["vlan_mode"])
		ports[name] = portInfo{tag: tag, mode: mode}
	}
	var out []Interface
	for _, r := range it.rows() {
		var ifc Interface
		if err := json.Unmarshal(r["name"], &ifc.Name); err != nil {
			return nil, fmt.Errorf("decode OVS interface name: %w", err)
		}
		ifc.OFPort, _ = atomInt(r["ofport"])
		ids, err := atomMap(r["external_ids"])
		if err != nil {
			return nil, fmt.Errorf("decode external_ids of OVS interface %s: %w", ifc.Name, err)
		}
		ifc.ExternalIDs = ids
		rate, _ := atomInt(r["ingress_policing_rate"])
		burst, _ := atomInt(r["ingress_policing_burst"])
		ifc.Policing = Policing{RateKbps: uint64(max(rate, 0)), BurstKbits: uint64(max(burst, 0))}
		ifc.Error, _ = atomString(r["error"])
		if p, ok := ports[ifc.Name]; ok {
			ifc.VLAN, ifc.VLANMode = p.tag, p.mode
		}
		out = append(out, ifc)
	}
	return out, nil
}

// atomInt decodes an integer column; an empty set (no value) is 0.
func atomInt(raw json.RawMessage) (int, error) {
	var n int
	if err := json.Unmarshal(raw, &n); err == nil {
		return n, nil
	}
	var set []json.RawMessage
	if err := json.Unmarshal(raw, &set); err != nil || len(set) != 2 {
		return 0, fmt.Errorf("not an integer: %s", raw)
	}
	var items []int
	if err := json.Unmarshal(set[1], &items); err != nil {
		return 0, fmt.Errorf("not an integer: %s", raw)
	}
	if len(items) == 0 {
		return 0, nil
	}
	return items[0], nil
}

// atomString decodes a string column; an empty set is "".
func atomString(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var set []json.RawMessage
	if err := json.Unmarshal(raw, &set); err != nil || len(set) != 2 {
		return "", fmt.Errorf("not a string: %s", raw)
	}
	var items []string
	if err := json.Unmarshal(set[1], &items); err != nil {
		return "", fmt.Errorf("not a string: %s", raw)
	}
	if len(items) == 0 {
		return "", nil
	}
	return items[0], nil
}

// atomMap decodes a map column: ["map",[["k","v"],...]].
func atomMap(raw json.RawMessage) (map[string]string, error) {
	var m []json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || len(m) != 2 {
		return nil, fmt.Errorf("not a map: %s", raw)
	}
	var kind string
	if err := json.Unmarshal(m[0], &kind); err != nil || kind != "map" {
		return nil, fmt.Errorf("not a map: %s", raw)
	}
	var pairs [][2]string
	if err := json.Unmarshal(m[1], &pairs); err != nil {
		return nil, fmt.Errorf("not a string map: %s", raw)
	}
	out := make(map[string]string, len(pairs))
	for _, p := range pairs {
		out[p[0]] = p[1]
	}
	return out, nil
}
