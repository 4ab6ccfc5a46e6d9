package agent

import (
	"testing"

	"github.com/stickynet/stickynet/nodeagent/datapath"
	"github.com/stickynet/stickynet/nodeagent/ovs"
)

// A stale record removed at restart gives its OpenFlow port number back
// only if no other OVS interface has that number.
func TestPortOfAnother(t *testing.T) {
	byName := map[string]ovs.Interface{
		"sn-kept":  {Name: "sn-kept", OFPort: 7},
		"sn-stale": {Name: "sn-stale", OFPort: 9},
	}
	if !portOfAnother(byName, &datapath.Attachment{HostVeth: "sn-gone", OFPort: 7}) {
		t.Error("port 7 of a kept interface would be freed with a stale record naming it")
	}
	if portOfAnother(byName, &datapath.Attachment{HostVeth: "sn-stale", OFPort: 9}) {
		t.Error("port 9, which only the removed attachment's own interface has, stays taken")
	}
}
