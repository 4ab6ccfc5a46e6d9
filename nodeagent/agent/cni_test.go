package agent

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

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
