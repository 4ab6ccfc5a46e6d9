package state

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/datapath"
)

func TestPutListDelete(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	a := &datapath.Attachment{
		Network: "stickynet", ContainerID: "abc123", IfName: "eth0", Netns: "/var/run/netns/x",
		PodNamespace: "ns", PodName: "web-0", PodUID: "u1", HostVeth: "sn0123456789abc", OFPort: 101,
		MAC: "02:00:00:00:00:01", IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24"), netip.MustParsePrefix("fd00::5/64")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, VLAN: 7, Bandwidth: annotations.Bandwidth{Ingress: annotations.Limit{Rate: 1e6}},
	}
	b := *a
	b.ContainerID, b.IfName = "abc123", "net/1" // a name that needs escaping
	for _, x := range []*datapath.Attachment{a, &b} {
		if err := s.Put(x); err != nil {
			t.Fatal(err)
		}
	}
	a.OFPort = 102 // overwrite
	if err := s.Put(a); err != nil {
		t.Fatal(err)
	}
	got, err := s.List()
	if err != nil || len(got) != 2 {
		t.Fatalf("List = %d records, %v; want 2", len(got), err)
	}
	byKey := map[string]*datapath.Attachment{}
	for _, g := range got {
		byKey[g.Key()] = g
	}
	if !reflect.DeepEqual(byKey[a.Key()], a) || !reflect.DeepEqual(byKey[b.Key()], &b) {
		t.Fatalf("List = %+v", got)
	}
	if err := s.Delete(a); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(a); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if got, _ := s.List(); len(got) != 1 || got[0].Key() != b.Key() {
		t.Fatalf("after Delete: %+v", got)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "cache"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestListReportsBadRecords(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	if err := os.WriteFile(filepath.Join(dir, "x_eth0.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), "x_eth0.json") {
		t.Fatalf("List error = %v; want one naming the bad file", err)
	}
}

// A write the agent never finished (stopped between creating the temporary
// file and renaming it) is removed when the folder is opened; records stay.
func TestOpenRemovesUnfinishedWrites(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{".tmp-123": "{", "x_eth0.json": "{}"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unfinished write after Open: %v; want it removed", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x_eth0.json")); err != nil {
		t.Errorf("record after Open: %v; want it kept", err)
	}
}
