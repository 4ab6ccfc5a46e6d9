package ovs

import (
	"context"
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/stickynet/stickynet/internal/testenv"
)

func TestAddPortArgs(t *testing.T) {
	tests := []struct {
		name string
		port Port
		want string
	}{
		{
			name: "untagged, labelled",
			port: Port{Name: "sn1", OFPort: 100, ExternalIDs: map[string]string{"b": "x/y", "a": `q"uote`}},
			want: `-- --may-exist add-port br sn1 -- set Interface sn1 ofport_request=100 external_ids:a="q\"uote" external_ids:b="x/y" -- set Port sn1 vlan_mode=access tag=[]`,
		},
		{
			name: "VLAN and policing",
			port: Port{Name: "sn2", VLAN: 42, Policing: &Policing{RateKbps: 1000, BurstKbits: 800}},
			want: `-- --may-exist add-port br sn2 -- set Interface sn2 ingress_policing_rate=1000 ingress_policing_burst=800 -- set Port sn2 vlan_mode=access tag=42`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(addPortArgs("br", tt.port), " "); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestAddBridgeArgs(t *testing.T) {
	got := strings.Join(addBridgeArgs("br-x", "netdev"), " ")
	want := "-- --may-exist add-br br-x -- set Bridge br-x datapath_type=netdev -- br-set-external-id br-x stickynet-managed true"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestGlobalsAndTarget(t *testing.T) {
	tests := []struct {
		cfg        Config
		wantGlobal string
		wantTarget string
	}{
		{cfg: Config{Bridge: "br", Timeout: 10 * time.Second}, wantGlobal: "--timeout=10", wantTarget: "br"},
		{cfg: Config{Bridge: "br", DB: "unix:/x/db.sock", RunDir: "/x", Timeout: 100 * time.Millisecond}, wantGlobal: "--db=unix:/x/db.sock --timeout=1", wantTarget: "unix:/x/br.mgmt"},
	}
	for _, tt := range tests {
		if g := strings.Join(vsctlGlobal(tt.cfg, tt.cfg.Timeout), " "); g != tt.wantGlobal {
			t.Errorf("vsctlGlobal(%+v) = %s, want %s", tt.cfg, g, tt.wantGlobal)
		}
		if g := ofTarget(tt.cfg); g != tt.wantTarget {
			t.Errorf("ofTarget(%+v) = %s, want %s", tt.cfg, g, tt.wantTarget)
		}
	}
}

func TestParseInterfaces(t *testing.T) {
	ifc := `{"data":[["sn1",100,["map",[["stickynet-pod-name","web-0"],["stickynet-container-id","c1"]]],2000,1600,["set",[]]],` +
		`["br",65534,["map",[]],0,0,["set",[]]],` +
		`["sn2",-1,["map",[]],0,0,"could not open network device sn2 (No such device)"]],` +
		`"headings":["name","ofport","external_ids","ingress_policing_rate","ingress_policing_burst","error"]}`
	port := `{"data":[["sn1",7,"access"],["br",["set",[]],["set",[]]],["sn2",["set",[]],"access"]],"headings":["name","tag","vlan_mode"]}`
	got, err := parseInterfaces([]byte(ifc), []byte(port))
	if err != nil {
		t.Fatal(err)
	}
	want := []Interface{
		{Name: "sn1", OFPort: 100, ExternalIDs: map[string]string{"stickynet-pod-name": "web-0", "stickynet-container-id": "c1"}, Policing: Policing{2000, 1600}, VLAN: 7, VLANMode: "access"},
		{Name: "br", OFPort: 65534, ExternalIDs: map[string]string{}},
		{Name: "sn2", OFPort: -1, ExternalIDs: map[string]string{}, VLANMode: "access", Error: "could not open network device sn2 (No such device)"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{`{`, `{"data":[[1]],"headings":["name"]}`} {
		if _, err := parseInterfaces([]byte(bad), []byte(port)); err == nil {
			t.Errorf("parseInterfaces(%s): want error", bad)
		}
	}
}

func TestMeterSyntax(t *testing.T) {
	if got := meterSpec(Meter{ID: 101, RateKbps: 20000, BurstKbits: 16000}); got != "meter=101,kbps,burst,stats,bands=type=drop,rate=20000,burst_size=16000" {
		t.Errorf("meterSpec = %s", got)
	}
	if got := meterFlow(101, 101); got != "table=0,priority=100,in_port=101,actions=meter:101,NORMAL" {
		t.Errorf("meterFlow = %s", got)
	}
}

func TestParseMeters(t *testing.T) {
	out := "OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):\nmeter=1 kbps burst stats bands=\ntype=drop rate=300000 burst_size=240000\n\nmeter=102 kbps burst stats bands=\ntype=drop rate=20000 burst_size=16000\n"
	got, err := parseMeters([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]Meter{1: {1, 300000, 240000}, 102: {102, 20000, 16000}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got, err := parseMeters([]byte("OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):\n")); err != nil || len(got) != 0 {
		t.Errorf("empty: %v %v", got, err)
	}
	if _, err := parseMeters([]byte("meter=x kbps")); err == nil {
		t.Error("bad id: want error")
	}
}

func TestParseMeterFlows(t *testing.T) {
	out := " priority=100,in_port=101 actions=meter:101,NORMAL\n cookie=0x0, duration=1s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=7 actions=meter:9,NORMAL\n priority=0 actions=NORMAL\n"
	if got := parseMeterFlows([]byte(out)); !reflect.DeepEqual(got, map[int]int{101: 101, 7: 9}) {
		t.Errorf("got %v", got)
	}
}

// TestClientAgainstOVS drives a private Open vSwitch through the client. It
// runs in a network namespace of its own: the userspace datapath makes
// persistent tap devices (ovs-netdev and one per bridge) that outlive
// ovs-vswitchd, and they go with the namespace.
// startOVS starts a private OVS in a throwaway netns.
func startOVS(t *testing.T) *testenv.OVS {
	t.Helper()
	testenv.Root(t)
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		_ = netns.Close()
		if err := testutils.UnmountNS(netns); err != nil {
			t.Errorf("remove netns %s: %v", netns.Path(), err)
		}
	})
	return testenv.StartOVS(t, netns.Path())
}

func TestClientAgainstOVS(t *testing.T) {
	o := startOVS(t)
	ctx := context.Background()
	c := New(Config{DB: o.DB, RunDir: o.RunDir, Bridge: "br-t"}, ExecRunner{})
	if ok, err := c.BridgeExists(ctx); err != nil || ok {
		t.Fatalf("BridgeExists before = %v, %v", ok, err)
	}
	dt, err := c.EnsureBridge(ctx, DatapathNetdev)
	if err != nil || dt != DatapathNetdev {
		t.Fatalf("EnsureBridge = %q, %v", dt, err)
	}
	// An existing bridge keeps its datapath type.
	if dt, err := c.EnsureBridge(ctx, DatapathSystem); err != nil || dt != DatapathNetdev {
		t.Fatalf("EnsureBridge again = %q, %v; want netdev kept", dt, err)
	}
	// An internal port stands in for a pod veth (no netns needed here).
	if out, err := exec.Command("ovs-vsctl", "--db="+o.DB, "add-port", "br-t", "p1", "--", "set", "Interface", "p1", "type=internal").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := c.AddPort(ctx, Port{Name: "p1", OFPort: 120, VLAN: 3, ExternalIDs: map[string]string{"stickynet-container-id": "c/1"}, Policing: &Policing{RateKbps: 500, BurstKbits: 400}}); err != nil {
		t.Fatal(err)
	}
	ifcs, err := c.Interfaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var p1 *Interface
	for i := range ifcs {
		if ifcs[i].Name == "p1" {
			p1 = &ifcs[i]
		}
	}
	if p1 == nil || p1.OFPort != 120 || p1.VLAN != 3 || p1.VLANMode != "access" || p1.ExternalIDs["stickynet-container-id"] != "c/1" || p1.Policing != (Policing{500, 400}) {
		t.Fatalf("p1 = %+v", p1)
	}
	m := Meter{ID: 120, RateKbps: 1000, BurstKbits: 800}
	if err := c.ModMeter(ctx, m); !errors.Is(err, ErrUnknownMeter) {
		t.Fatalf("ModMeter of a missing meter = %v; want ErrUnknownMeter", err)
	}
	if err := c.AddMeter(ctx, m); err != nil {
		t.Fatal(err)
	}
	m.RateKbps = 1500
	if err := c.ModMeter(ctx, m); err != nil {
		t.Fatal(err)
	}
	m.RateKbps = 2000
	if err := c.AddMeter(ctx, m); err != nil {
		t.Fatalf("AddMeter on an existing meter: %v", err)
	}
	if err := c.AddMeterFlow(ctx, 120, 120); err != nil {
		t.Fatal(err)
	}
	meters, err := c.Meters(ctx)
	if err != nil || meters[120] != m {
		t.Fatalf("Meters = %v, %v; want %v", meters, err, m)
	}
	if flows, err := c.MeterFlows(ctx); err != nil || flows[120] != 120 {
		t.Fatalf("MeterFlows = %v, %v", flows, err)
	}
	if err := c.DelMeter(ctx, 120); err != nil {
		t.Fatal(err)
	}
	if flows, err := c.MeterFlows(ctx); err != nil || len(flows) != 0 {
		t.Fatalf("flows after deleting their meter: %v, %v", flows, err)
	}
	if err := c.DelMeter(ctx, 120); err != nil {
		t.Fatalf("DelMeter of a missing meter: %v", err)
	}
	// The datapath relies on these two OVS behaviours.
	if err := c.AddMeterFlow(ctx, 121, 121); err == nil {
		t.Error("OVS accepted a flow through a missing meter")
	}
	if err := c.DelPortFlows(ctx, 121); err != nil {
		t.Errorf("DelPortFlows without flows: %v", err)
	}
	for _, id := range []int{130, 131, 132} {
		if err := c.AddMeter(ctx, Meter{ID: id, RateKbps: 1000, BurstKbits: 800}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AddMeterFlows(ctx, []int{130, 131, 132}); err != nil {
		t.Fatal(err)
	}
	if flows, err := c.MeterFlows(ctx); err != nil || !reflect.DeepEqual(flows, map[int]int{130: 130, 131: 131, 132: 132}) {
		t.Fatalf("MeterFlows after AddMeterFlows = %v, %v", flows, err)
	}
	if err := c.DelPort(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DelPort(ctx, "p1"); err != nil {
		t.Fatalf("DelPort of a missing port: %v", err)
	}
}

// TestNoAnswer: with ovs-vswitchd gone, a change that waits for it ends in
// ErrNoAnswer, naming the command, by its own --timeout (capped by the
// caller's deadline) or by the deadline itself; a --no-wait change still
// goes through.
func TestNoAnswer(t *testing.T) {
	o := startOVS(t)
	c := New(Config{DB: o.DB, RunDir: o.RunDir, Bridge: "br-t"}, ExecRunner{}) // Timeout 10 s
	if _, err := c.EnsureBridge(context.Background(), DatapathNetdev); err != nil {
		t.Fatal(err)
	}
	short := New(Config{DB: o.DB, RunDir: o.RunDir, Bridge: "br-t", Timeout: 2 * time.Second}, ExecRunner{})
	o.StopVswitchd(t)
	for _, tt := range []struct {
		name     string
		c        *Client
		deadline time.Duration // 0: none
		port     string
		want     string // in the error
		// deadlineEnds: the deadline, not its --timeout, ends it. Without
		// a deadline only its --timeout can.
		deadlineEnds bool
	}{
		// ovs-vsctl's own --timeout, from the Config, ends it.
		{name: "own timeout", c: short, port: "p1", want: "--timeout=2 "},
		// Its --timeout is cut to the 2 whole seconds the deadline leaves
		// (which of the two then ends it depends on how soon it started).
		{name: "capped timeout", c: c, deadline: 2900 * time.Millisecond, port: "p3", want: "--timeout=2 "},
		// The deadline comes before its --timeout (at least 1 s) and ends it.
		{name: "deadline", c: c, deadline: 500 * time.Millisecond, port: "p2", want: "--timeout=1 ", deadlineEnds: true},
	} {
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if tt.deadline > 0 {
			ctx, cancel = context.WithTimeout(ctx, tt.deadline)
		}
		err := tt.c.AddPort(ctx, Port{Name: tt.port, OFPort: 100})
		byDeadline := ctx.Err() != nil
		cancel()
		if !errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "add-port br-t "+tt.port) {
			t.Errorf("%s: AddPort without ovs-vswitchd = %v; want ErrNoAnswer naming add-port and %q", tt.name, err, tt.want)
		}
		if tt.deadlineEnds && !byDeadline {
			t.Errorf("%s: AddPort returned before the deadline", tt.name)
		}
	}
	if err := c.DelPort(context.Background(), "p1"); err != nil {
		t.Errorf("DelPort (--no-wait) without ovs-vswitchd: %v", err)
	}
	// ovs-ofctl finds no management socket: unreachable, at once.
	if _, err := c.Meters(context.Background()); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach ovs-vswitchd's management socket") {
		t.Errorf("Meters without ovs-vswitchd = %v; want ErrUnreachable naming the management socket", err)
	}
	// ovs-vsctl finds no ovsdb-server socket.
	o.HideDB(t)
	if _, err := c.Interfaces(context.Background()); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach ovsdb-server") {
		t.Errorf("Interfaces without ovsdb-server's socket = %v; want ErrUnreachable naming ovsdb-server", err)
	}
}

// unreachable tells a connection that failed from other failures, such as a
// bridge that does not speak OpenFlow 1.3 (messages of ovs-vsctl and
// ovs-ofctl 3.1).
func TestUnreachable(t *testing.T) {
	for msg, want := range map[string]bool{
		"ovs-vsctl: unix:/run/openvswitch/db.sock: database connection failed (No such file or directory)": true,
		"ovs-vsctl: unix:/run/openvswitch/db.sock: database connection failed (Connection refused)":        true,
		"ovs-ofctl: connecting to unix:/run/openvswitch/br0.mgmt (No such file or directory)":              true,
		"ovs-ofctl: connecting to unix:/run/openvswitch/br0.mgmt (Connection refused)":                     true,
		"ovs-ofctl: unix:/run/openvswitch/br0.mgmt: failed to connect to socket (Broken pipe)":             true,
		"ovs-ofctl: unix:/run/openvswitch/br0.mgmt: failed to connect to socket (Protocol error)":          false,
		"ovs-vsctl: no bridge named br0":             false,
		"ovs-ofctl: br0 is not a bridge or a socket": false,
	} {
		if got := unreachable(msg); got != want {
			t.Errorf("unreachable(%q) = %v; want %v", msg, got, want)
		}
	}
}

// TestMarker: the marker flow outlives the bridge's reconfigurations but not
// a restart of ovs-vswitchd or the bridge's deletion; without ovs-vswitchd,
// Marked is an error, not a restart.
func TestMarker(t *testing.T) {
	o := startOVS(t)
	ctx := context.Background()
	c := New(Config{DB: o.DB, RunDir: o.RunDir, Bridge: "br-t"}, ExecRunner{})
	if _, err := c.EnsureBridge(ctx, DatapathNetdev); err != nil {
		t.Fatal(err)
	}
	marked := func(step string, want bool) {
		t.Helper()
		if got, err := c.Marked(ctx); err != nil || got != want {
			t.Errorf("%s: Marked = %v, %v; want %v", step, got, err, want)
		}
	}
	marked("new bridge", false)
	if err := c.Mark(ctx); err != nil {
		t.Fatal(err)
	}
	marked("after Mark", true)
	if err := c.AddPort(ctx, Port{Name: "p1", OFPort: 100}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddMeter(ctx, Meter{ID: 100, RateKbps: 1000, BurstKbits: 800}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddMeterFlows(ctx, []int{100}); err != nil {
		t.Fatal(err)
	}
	if err := c.DelPortFlows(ctx, 100); err != nil {
		t.Fatal(err)
	}
	marked("after a port and its flows came and went", true)
	if flows := o.Ofctl(t, "dump-flows", "br-t", "table=0"); !strings.Contains(flows, "priority=0 actions=NORMAL") {
		t.Errorf("the bridge's default flow is gone:\n%s", flows)
	}

	o.RestartVswitchd(t)
	marked("after ovs-vswitchd restarted", false)
	if err := c.Mark(ctx); err != nil {
		t.Fatal(err)
	}
	o.Vsctl(t, "del-br", "br-t")
	marked("bridge deleted", false)

	if _, err := c.EnsureBridge(ctx, DatapathNetdev); err != nil {
		t.Fatal(err)
	}
	if err := c.Mark(ctx); err != nil {
		t.Fatal(err)
	}
	o.StopVswitchd(t)
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if got, err := c.Marked(tctx); err == nil {
		t.Errorf("Marked without ovs-vswitchd = %v, nil; want an error", got)
	}
}
