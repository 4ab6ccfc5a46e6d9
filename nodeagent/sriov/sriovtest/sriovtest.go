// Package sriovtest stands in for SR-IOV hardware in tests: a generated sysfs
// tree whose VFs' netdevs are real interfaces (veths) so that moves, renames
// and addressing run for real, and a PF whose VF settings are kept in memory
// and every call recorded.
package sriovtest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/stickynet/stickynet/nodeagent/sriov"
)

// MakeTree writes <root>/class/net/<pf>/device/virtfn<i>/net/<netdevs[i]>.
func MakeTree(root, pf string, netdevs []string) error {
	for i, nd := range netdevs {
		if err := os.MkdirAll(filepath.Join(root, "class", "net", pf, "device", fmt.Sprintf("virtfn%d", i), "net", nd), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// Recorder is a PF whose VFs exist only in memory. It records each call.
type Recorder struct {
	mu    sync.Mutex
	vfs   map[string]*sriov.Config
	calls []string
	// Fail, when set, is returned by the call it names (such as "SetVfTrust").
	// Set it with SetFail once the recorder is in use.
	Fail map[string]error
	// before, if set, is called with each call's name before it is made.
	before func(call string)
}

// OnCall calls f with the name of each call before it is made (nil: none),
// for a test to look at the node at that moment.
func (r *Recorder) OnCall(f func(call string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.before = f
}

// SetFail makes the call it names return err from now on (nil: succeed).
func (r *Recorder) SetFail(call string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Fail == nil {
		r.Fail = map[string]error{}
	}
	r.Fail[call] = err
}

var _ sriov.PF = (*Recorder)(nil)

// NewRecorder returns a PF double whose VFs start with initial (per "pf/vf").
func NewRecorder(initial map[string]sriov.Config) *Recorder {
	r := &Recorder{vfs: map[string]*sriov.Config{}}
	for k, c := range initial {
		c := c
		r.vfs[k] = &c
	}
	return r
}

func key(pf string, vf int) string { return fmt.Sprintf("%s/%d", pf, vf) }

func (r *Recorder) do(call, pf string, vf int, arg string, set func(*sriov.Config)) error {
	r.mu.Lock()
	before := r.before
	r.mu.Unlock()
	if before != nil {
		before(call)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("%s %s/%d %s", call, pf, vf, arg))
	if err := r.Fail[call]; err != nil {
		return err
	}
	c, ok := r.vfs[key(pf, vf)]
	if !ok {
		return fmt.Errorf("PF %s has no VF %d", pf, vf)
	}
	set(c)
	return nil
}

// SetVfHardwareAddr records and sets the MAC.
func (r *Recorder) SetVfHardwareAddr(pf string, vf int, mac net.HardwareAddr) error {
	return r.do("SetVfHardwareAddr", pf, vf, mac.String(), func(c *sriov.Config) { c.MAC = mac.String() })
}

// SetVfVlan records and sets the VLAN.
func (r *Recorder) SetVfVlan(pf string, vf, vlan int) error {
	return r.do("SetVfVlan", pf, vf, fmt.Sprint(vlan), func(c *sriov.Config) { c.VLAN = vlan })
}

// SetVfSpoofchk records and sets the spoof check.
func (r *Recorder) SetVfSpoofchk(pf string, vf int, on bool) error {
	return r.do("SetVfSpoofchk", pf, vf, fmt.Sprint(on), func(c *sriov.Config) { c.SpoofChk = on })
}

// SetVfTrust records and sets trust.
func (r *Recorder) SetVfTrust(pf string, vf int, on bool) error {
	return r.do("SetVfTrust", pf, vf, fmt.Sprint(on), func(c *sriov.Config) { c.Trust = on })
}

// SetVfMaxTxRate records and sets max_tx_rate.
func (r *Recorder) SetVfMaxTxRate(pf string, vf, mbps int) error {
	return r.do("SetVfMaxTxRate", pf, vf, fmt.Sprint(mbps), func(c *sriov.Config) { c.MaxTxRateMbps = mbps })
}

// SetVfLinkState records and sets the link state.
func (r *Recorder) SetVfLinkState(pf string, vf int, s sriov.LinkState) error {
	return r.do("SetVfLinkState", pf, vf, string(s), func(c *sriov.Config) { c.LinkState = s })
}

// VfConfig returns the VF's configuration.
func (r *Recorder) VfConfig(pf string, vf int) (sriov.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.vfs[key(pf, vf)]
	if !ok {
		return sriov.Config{}, fmt.Errorf("PF %s has no VF %d", pf, vf)
	}
	return *c, nil
}

// Calls returns the calls so far and forgets them.
func (r *Recorder) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}
