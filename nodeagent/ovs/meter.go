package ovs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Meter is an OpenFlow meter with one drop band.
type Meter struct {
	ID         int
	RateKbps   uint64
	BurstKbits uint64
}

// meterSpec is ovs-ofctl's meter syntax for m.
func meterSpec(m Meter) string {
	return fmt.Sprintf("meter=%d,kbps,burst,stats,bands=type=drop,rate=%d,burst_size=%d", m.ID, m.RateKbps, m.BurstKbits)
}

// meterFlow sends what arrives on port through meter id, then on as the
// bridge would (NORMAL keeps VLAN and MAC learning).
func meterFlow(port, id int) string {
	return fmt.Sprintf("table=0,priority=%d,in_port=%d,actions=meter:%d,NORMAL", meterFlowPriority, port, id)
}

// meterFlowPriority is above the bridge's default NORMAL flow (priority 0).
const meterFlowPriority = 100

// portMatch matches every flow of the agent for port.
func portMatch(port int) string { return fmt.Sprintf("table=0,in_port=%d", port) }

// ErrUnknownMeter is returned by ModMeter for a meter the switch lacks.
var ErrUnknownMeter = errors.New("no such OpenFlow meter")

// AddMeter creates the meter, or changes it if it already exists.
func (c *Client) AddMeter(ctx context.Context, m Meter) error {
	_, err := c.ofctl(ctx, "add-meter", meterSpec(m))
	if err != nil && strings.Contains(err.Error(), "METER_EXISTS") {
		_, err = c.ofctl(ctx, "mod-meter", meterSpec(m))
	}
	if err != nil {
		return fmt.Errorf("add OpenFlow meter %d on %s: %w", m.ID, c.cfg.Bridge, err)
	}
	return nil
}

// ModMeter changes an existing meter; ErrUnknownMeter if there is none.
func (c *Client) ModMeter(ctx context.Context, m Meter) error {
	_, err := c.ofctl(ctx, "mod-meter", meterSpec(m))
	if err != nil && strings.Contains(err.Error(), "UNKNOWN_METER") {
		return fmt.Errorf("change OpenFlow meter %d on %s: %w", m.ID, c.cfg.Bridge, ErrUnknownMeter)
	}
	if err != nil {
		return fmt.Errorf("change OpenFlow meter %d on %s: %w", m.ID, c.cfg.Bridge, err)
	}
	return nil
}

// DelMeter deletes a meter and with it (OpenFlow 1.3, 6.6.4) every flow that
// uses it; a missing meter is not an error.
func (c *Client) DelMeter(ctx context.Context, id int) error {
	if _, err := c.ofctl(ctx, "del-meter", "meter="+strconv.Itoa(id)); err != nil && !strings.Contains(err.Error(), "UNKNOWN_METER") {
		return fmt.Errorf("delete OpenFlow meter %d on %s: %w", id, c.cfg.Bridge, err)
	}
	return nil
}

// AddMeterFlow steers traffic from port through meter id.
func (c *Client) AddMeterFlow(ctx context.Context, port, id int) error {
	if _, err := c.ofctl(ctx, "add-flow", meterFlow(port, id)); err != nil {
		return fmt.Errorf("add meter flow for OpenFlow port %d on %s: %w", port, c.cfg.Bridge, err)
	}
	return nil
}

// AddMeterFlows steers each port through the meter of the same number, in
// one ovs-ofctl run (one flow-table change for ovs-vswitchd to apply).
func (c *Client) AddMeterFlows(ctx context.Context, ports []int) error {
	if len(ports) == 0 {
		return nil
	}
	var b strings.Builder
	for _, p := range ports {
		b.WriteString(meterFlow(p, p))
		b.WriteByte('\n')
	}
	if _, err := c.ofctlIn(ctx, []byte(b.String()), "add-flows", "-"); err != nil {
		return fmt.Errorf("add meter flows for OpenFlow ports %v on %s: %w", ports, c.cfg.Bridge, err)
	}
	return nil
}

// DelPortFlows removes the agent's flows for port.
func (c *Client) DelPortFlows(ctx context.Context, port int) error {
	if _, err := c.ofctl(ctx, "del-flows", portMatch(port)); err != nil {
		return fmt.Errorf("delete flows of OpenFlow port %d on %s: %w", port, c.cfg.Bridge, err)
	}
	return nil
}

// Meters returns the bridge's meters by ID.
func (c *Client) Meters(ctx context.Context) (map[int]Meter, error) {
	out, err := c.ofctl(ctx, "dump-meters")
	if err != nil {
		return nil, fmt.Errorf("list OpenFlow meters on %s: %w", c.cfg.Bridge, err)
	}
	return parseMeters(out)
}

// MeterFlows returns, per OpenFlow port, the meter its traffic goes through.
func (c *Client) MeterFlows(ctx context.Context) (map[int]int, error) {
	out, err := c.ofctl(ctx, "dump-flows", "--no-stats", "table=0")
	if err != nil {
		return nil, fmt.Errorf("list OpenFlow flows on %s: %w", c.cfg.Bridge, err)
	}
	return parseMeterFlows(out), nil
}

// parseMeters reads dump-meters output:
//
//	OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):
//	meter=1 kbps burst stats bands=
//	type=drop rate=300000 burst_size=240000
func parseMeters(out []byte) (map[int]Meter, error) {
	meters := map[int]Meter{}
	var cur *Meter
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		for _, field := range strings.Fields(sc.Text()) {
			k, v, ok := strings.Cut(field, "=")
			if !ok {
				continue
			}
			switch k {
			case "meter":
				id, err := strconv.Atoi(v)
				if err != nil {
					return nil, fmt.Errorf("meter id %q in ovs-ofctl dump-meters output", v)
				}
				meters[id] = Meter{ID: id}
				m := meters[id]
				cur = &m
			case "rate", "burst_size":
				if cur == nil {
					continue
				}
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("meter %d %s %q in ovs-ofctl dump-meters output", cur.ID, k, v)
				}
				if k == "rate" {
					cur.RateKbps = n
				} else {
					cur.BurstKbits = n
				}
				meters[cur.ID] = *cur
			}
		}
	}
	return meters, nil
}

// parseMeterFlows finds "in_port=N ... actions=meter:M,..." flows.
func parseMeterFlows(out []byte) map[int]int {
	flows := map[int]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		_, actions, ok := strings.Cut(line, "actions=")
		if !ok || !strings.HasPrefix(actions, "meter:") {
			continue
		}
		mstr, _, _ := strings.Cut(strings.TrimPrefix(actions, "meter:"), ",")
		meter, err := strconv.Atoi(mstr)
		if err != nil {
			continue
		}
		for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' }) {
			if v, ok := strings.CutPrefix(f, "in_port="); ok {
				if port, err := strconv.Atoi(v); err == nil {
					flows[port] = meter
				}
			}
		}
	}
	return flows
}
