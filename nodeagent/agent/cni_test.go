package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/datapath"
)

func TestParseCNIArgs(t *testing.T) {
	tests := []struct {
		in      string
		want    podRef
		wantErr string
	}{
		{in: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1", want: podRef{"ns", "web-0", "u-1"}},
		{in: "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0", want: podRef{Namespace: "ns", Name: "web-0"}},
		{in: "K8S_POD_NAMESPACE=ns;;K8S_POD_NAME=a=b", want: podRef{Namespace: "ns", Name: "a=b"}},
		{in: "", wantErr: "lacks K8S_POD_NAMESPACE or K8S_POD_NAME"},
		{in: "K8S_POD_NAME=web-0", wantErr: "lacks"},
		{in: "K8S_POD_NAMESPACE", wantErr: "not KEY=VALUE"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseCNIArgs(tt.in)
			if tt.wantErr != "" {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(te.Msg, tt.wantErr) {
					t.Fatalf("error %v; want code 4 containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestBuildResult(t *testing.T) {
	at := &datapath.Attachment{
		IfName: "eth0", Netns: "/var/run/netns/p", HostVeth: "sn0123456789abc", MAC: "02:00:00:00:00:05",
		IPs:      []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24"), netip.MustParsePrefix("fd00::5/64")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
	}
	hostMAC, _ := net.ParseMAC("aa:bb:cc:dd:ee:ff")
	tests := []struct {
		version string
		want    string
	}{
		{version: "1.1.0", want: `{"cniVersion":"1.1.0","interfaces":[{"name":"sn0123456789abc","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/var/run/netns/p"}],"ips":[{"interface":1,"address":"10.0.0.5/24","gateway":"10.0.0.1"},{"interface":1,"address":"fd00::5/64","gateway":"fd00::1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"},{"dst":"::/0","gw":"fd00::1"}]}`},
		{version: "1.0.0", want: `{"cniVersion":"1.0.0","interfaces":[{"name":"sn0123456789abc","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/var/run/netns/p"}],"ips":[{"interface":1,"address":"10.0.0.5/24","gateway":"10.0.0.1"},{"interface":1,"address":"fd00::5/64","gateway":"fd00::1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"},{"dst":"::/0","gw":"fd00::1"}]}`},
		{version: "0.4.0", want: `{"cniVersion":"0.4.0","interfaces":[{"name":"sn0123456789abc","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/var/run/netns/p"}],"ips":[{"version":"4","interface":1,"address":"10.0.0.5/24","gateway":"10.0.0.1"},{"version":"6","interface":1,"address":"fd00::5/64","gateway":"fd00::1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"},{"dst":"::/0","gw":"fd00::1"}],"dns":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			b, err := buildResult(tt.version, at, hostMAC)
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			_ = json.Unmarshal([]byte(tt.want), &want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %s\nwant %s", b, tt.want)
			}
		})
	}
	if _, err := buildResult("0.0.9", at, hostMAC); err == nil {
		t.Error("unknown version: want error")
	}
}

func TestConfList(t *testing.T) {
	var c map[string]any
	if err := json.Unmarshal(ConfList("net-a", "/run/x.sock"), &c); err != nil {
		t.Fatal(err)
	}
	plugins, _ := c["plugins"].([]any)
	if c["cniVersion"] != "1.1.0" || c["name"] != "net-a" || len(plugins) != 1 {
		t.Fatalf("conflist %v", c)
	}
	p, _ := plugins[0].(map[string]any)
	if p["type"] != "stickynet" || p["socket"] != "/run/x.sock" {
		t.Fatalf("plugin %v", p)
	}
}

func TestBuildConfListWithFallback(t *testing.T) {
	fallback := []byte(`{
  "cniVersion": "1.0.0", "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true, "off": false}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]}`)
	b, err := BuildConfList(ConfListSpec{Network: "net-a", Socket: "/run/x.sock", CacheDir: "/var/lib/x", Fallback: fallback})
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type         string          `json:"type"`
			Socket       string          `json:"socket"`
			CacheDir     string          `json:"cacheDir"`
			Capabilities map[string]bool `json:"capabilities"`
			Fallback     json.RawMessage `json:"fallback"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("conflist %s: %v", b, err)
	}
	if c.CNIVersion != "1.1.0" || len(c.Plugins) != 1 {
		t.Fatalf("conflist %s", b)
	}
	p := c.Plugins[0]
	if p.Type != "stickynet" || p.Socket != "/run/x.sock" || p.CacheDir != "/var/lib/x" {
		t.Errorf("stickynet entry %+v", p)
	}
	if !reflect.DeepEqual(p.Capabilities, map[string]bool{"portMappings": true, "bandwidth": true}) {
		t.Errorf("capabilities %v, want the union of the fallback plugins' enabled ones", p.Capabilities)
	}
	var got, want any
	_ = json.Unmarshal(fallback, &want)
	if err := json.Unmarshal(p.Fallback, &got); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("fallback %s, want %s", p.Fallback, fallback)
	}

	// Without a fallback: no capabilities, no fallback key.
	b, err = BuildConfList(ConfListSpec{Network: "net-a", Socket: "/run/x.sock"})
	if err != nil || strings.Contains(string(b), "fallback") || strings.Contains(string(b), "capabilities") || strings.Contains(string(b), "cacheDir") {
		t.Errorf("conflist without fallback %s (%v)", b, err)
	}

	// The plugin's timeout: the default unless the agent asks for longer
	// (twice its pod wait), and as the plugin reads it.
	for _, tc := range []struct {
		timeout time.Duration
		want    time.Duration
	}{{0, api.DefaultTimeout}, {api.DefaultTimeout, api.DefaultTimeout}, {16 * time.Second, 16 * time.Second}} {
		b, err := BuildConfList(ConfListSpec{Network: "net-a", Socket: "/run/x.sock", Timeout: tc.timeout})
		if err != nil {
			t.Fatal(err)
		}
		var list struct{ Plugins []json.RawMessage }
		if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) != 1 {
			t.Fatalf("conflist %s: %v", b, err)
		}
		conf, err := api.ParseNetConf(append([]byte(`{"cniVersion":"1.1.0","name":"net-a",`), list.Plugins[0][1:]...))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := conf.RequestTimeout(); err != nil || got != tc.want {
			t.Errorf("Timeout %s: the plugin's timeout is %s (%v); want %s", tc.timeout, got, err, tc.want)
		}
	}

	for _, bad := range []struct{ conf, want string }{
		{`{"cniVersion":"1.0.0","name":"pods"}`, `no "plugins"`},
		{`{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"stickynet"}]}`, "another network than stickynet"},
		{`{"name":"pods","plugins":[{"type":"bridge"}]}`, `no "cniVersion"`},
		{`{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}`, "no name"},
		{`[1]`, "want a CNI network configuration list"},
	} {
		if _, err := BuildConfList(ConfListSpec{Network: "n", Socket: "/s", Fallback: []byte(bad.conf)}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("fallback %s: error %v, want one saying %q", bad.conf, err, bad.want)
		}
	}
}

func TestFallbackOption(t *testing.T) {
	dir := t.TempDir()
	load := func(path string) ([]byte, error) {
		o := Options{FallbackConfList: path}
		_, b, _, err := o.fallback()
		return b, err
	}
	if b, err := load(""); b != nil || err != nil {
		t.Errorf("no flag: %s, %v", b, err)
	}
	if b, err := load(FallbackAuto); b != nil || err != nil {
		t.Errorf("auto without a conflist folder: %s, %v; want none", b, err)
	}
	missing := dir + "/missing.conflist"
	if _, err := load(missing); err == nil || !strings.Contains(err.Error(), "--fallback-conflist="+missing) || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("missing file: %v", err)
	}
	bad := dir + "/bad.conflist"
	if err := os.WriteFile(bad, []byte(`{"cniVersion":"1.0.0","name":"pods","plugins":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(bad); err == nil || !strings.Contains(err.Error(), "--fallback-conflist="+bad) || !strings.Contains(err.Error(), "plugins") {
		t.Errorf("bad file: %v", err)
	}
	good := dir + "/good.conflist"
	if err := os.WriteFile(good, []byte(`{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := load(good); err != nil || len(b) == 0 {
		t.Errorf("good file: %s, %v", b, err)
	}
}

// TestFindFallback: auto takes the first usable network configuration in
// name order, passing over stickynet's own (under its name or another),
// files that do not parse and other extensions; a single plugin's .conf
// becomes a list.
func TestFindFallback(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if path, b, _, err := findFallback(dir, "00-stickynet.conflist"); path != "" || b != nil || err != nil {
		t.Fatalf("empty folder: %q %s %v; want none", path, b, err)
	}
	if path, _, _, err := findFallback(filepath.Join(dir, "absent"), "00-stickynet.conflist"); path != "" || err != nil {
		t.Fatalf("absent folder: %q %v; want none", path, err)
	}
	write("00-stickynet.conflist", `{"cniVersion":"1.1.0","name":"stickynet","plugins":[{"type":"stickynet"}]}`)
	write("01-old-stickynet.conflist", `{"cniVersion":"1.1.0","name":"stickynet","plugins":[{"type":"stickynet"}]}`)
	write("02-broken.conflist", `{"cniVersion":`)
	write("03-notes.txt", `{"cniVersion":"1.0.0","name":"txt","plugins":[{"type":"bridge"}]}`)
	write("05-listy.conf", `{"cniVersion":"1.0.0","name":"listy","plugins":[{"type":"bridge"}]}`) // runtimes read .conf as one plugin
	write("20-flannel.conflist", `{"cniVersion":"1.0.0","name":"flannel","plugins":[{"type":"flannel"}]}`)
	write("10-single.conf", `{"cniVersion":"1.0.0","name":"single","type":"bridge","bridge":"cni0"}`)
	path, b, skipped, err := findFallback(dir, "00-stickynet.conflist")
	if err != nil || filepath.Base(path) != "10-single.conf" {
		t.Fatalf("found %q (%v); want 10-single.conf", path, err)
	}
	l, err := api.ParseFallback(b)
	if err != nil || l.Name != "single" || len(l.Plugins) != 1 || l.Plugins[0].Network.Type != "bridge" || !strings.Contains(string(l.Plugins[0].Bytes), `"cni0"`) {
		t.Errorf("10-single.conf as a list: %s (%v)", b, err)
	}
	if len(skipped) != 3 || !strings.HasPrefix(skipped[0], "01-old-stickynet.conflist: ") || !strings.Contains(skipped[0], "another network than stickynet") ||
		!strings.HasPrefix(skipped[1], "02-broken.conflist: ") || !strings.HasPrefix(skipped[2], "05-listy.conf: ") || !strings.Contains(skipped[2], `without "type"`) {
		t.Errorf("passed over %q; want 01-old-stickynet.conflist (stickynet's), 02-broken.conflist and 05-listy.conf (a list in a .conf), each with its reason", skipped)
	}
	if f := ahead(dir, "00-stickynet.conflist"); f != "" {
		t.Errorf("ahead of 00-stickynet.conflist: %q; want none", f)
	}
	if f := ahead(dir, "15-mine.conflist"); filepath.Base(f) != "00-stickynet.conflist" {
		t.Errorf("ahead of 15-mine.conflist: %q; want 00-stickynet.conflist, the first a runtime would use", f)
	}
	if err := os.Remove(filepath.Join(dir, "10-single.conf")); err != nil {
		t.Fatal(err)
	}
	if path, _, _, _ := findFallback(dir, "00-stickynet.conflist"); filepath.Base(path) != "20-flannel.conflist" {
		t.Errorf("after 10-single.conf went: %q; want 20-flannel.conflist", path)
	}
}

func TestNotAdmitted(t *testing.T) {
	withFallback := &api.NetConf{Fallback: json.RawMessage(`{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}`)}
	without := &api.NetConf{}
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns-1", Annotations: map[string]string{"kubectl.kubernetes.io/restartedAt": "x"}}}
	asks := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web-0", Annotations: map[string]string{
		annotations.Pool: "demo", annotations.SriovNetwork: "fast",
	}}}

	fb, err := notAdmitted(withFallback, plain)
	if err != nil || fb == nil || !strings.Contains(fb.Reason, "kube-system/coredns-1") || !strings.Contains(fb.Reason, annotations.EnabledLabel) {
		t.Errorf("pod without stickynet annotations, with a fallback: %+v, %v; want the fallback with the reason", fb, err)
	}
	fb, err = notAdmitted(without, plain)
	if fb != nil || cniErrCode(err) != api.ErrPodNotAdmitted || !strings.Contains(err.Error(), "is its namespace labelled") {
		t.Errorf("pod without stickynet annotations, no fallback: %+v, %v; want error 100", fb, err)
	}
	fb, err = notAdmitted(withFallback, asks)
	if fb != nil || cniErrCode(err) != api.ErrPodNotAdmitted || !strings.Contains(err.Error(), `stickynet.io/pool="demo"`) {
		t.Errorf("pod asking for stickynet: %+v, %v; want error 100 naming the first stickynet.io/ annotation", fb, err)
	}
}

// An assignment copied from another namespace's pod (into a namespace the
// webhook does not serve) is refused; one of the pod's own namespace is not.
func TestCopiedAssignment(t *testing.T) {
	pod := func(ns string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0-debug", Annotations: map[string]string{annotations.AssignedIP: "10.20.0.7/24"}}}
	}
	asg := annotations.Assignment{Identity: "statefulset/app/web/0"}
	if err := copiedAssignment(pod("other"), asg); cniErrCode(err) != api.ErrPodNotAdmitted || !strings.Contains(err.Error(), "statefulset/app/web/0 (10.20.0.7/24), an identity of namespace app") {
		t.Errorf("copy in namespace other: %v; want error 100 naming the identity and its namespace", err)
	}
	if err := copiedAssignment(pod("app"), asg); err != nil {
		t.Errorf("pod of the identity's namespace: %v", err)
	}
}

func cniErrCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// A failed CNI request is logged once, as an error, naming the pod (from
// CNI_ARGS) and with the failure under one key: the line had no pod, was at
// info level, and carried "msg" twice (the log's own and the error's).
func TestFailureLogNamesPod(t *testing.T) {
	var lines []string
	log := funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{})
	resp := (&agent{}).Handle(klog.NewContext(context.Background(), log), api.Request{
		Command: api.CommandAdd, ContainerID: "c1", IfName: "eth0",
		Args:   "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
		Config: json.RawMessage(`{"cniVersion":"1.1.0","type":"stickynet"}`),
	})
	if resp.Error == nil || len(lines) != 1 {
		t.Fatalf("response %+v, log %q; want an error, logged once", resp, lines)
	}
	for _, want := range []string{`"pod"="shop/web-0"`, `"error"="network configuration has no \"name\""`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("log line %s lacks %s", lines[0], want)
		}
	}
	if strings.Count(lines[0], `"msg"=`) != 1 {
		t.Errorf("log line %s has %d msg keys; want 1", lines[0], strings.Count(lines[0], `"msg"=`))
	}
}
