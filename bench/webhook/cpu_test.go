package webhook

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stickynet/stickynet/internal/testenv"
)

// cpuTicks is the CPU time (user + system, in clock ticks) of every process
// on the machine, by PID, with a label per process: where the time of a
// creation goes.
type cpuTicks map[int]procTicks

type procTicks struct {
	label string
	start int64 // when the process started (clock ticks after boot): tells a reused PID
	ticks int64
}

// sampleCPU reads /proc. Processes are labelled by their program name; the
// two etcds apart (the cluster's, in the cluster's folder, and stickynet's),
// this test process (the clients) as "bench" and its children by role, and
// the kernel's workers together as "kworker" (a worker's name changes with
// the work it runs).
func sampleCPU() cpuTicks {
	out := cpuTicks{}
	self := os.Getpid()
	selfComm, _, _, _ := readStat("/proc/self")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		label, start, ticks, ok := readStat(d)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(label, "kworker/"):
			label = "kworker"
		case pid == self:
			label = "bench (clients)"
		case label == selfComm:
			env, _ := os.ReadFile(filepath.Join(d, "environ"))
			for _, kv := range strings.Split(string(env), "\x00") {
				if role, ok := strings.CutPrefix(kv, testenv.ChildEnv+"="); ok {
					label = "webhook (" + role + ")"
				}
			}
		case label == "etcd":
			cmd, _ := os.ReadFile(filepath.Join(d, "cmdline"))
			if strings.Contains(string(cmd), "stickynet-cluster-") {
				label = "etcd (cluster)"
			} else {
				label = "etcd (stickynet)"
			}
		}
		out[pid] = procTicks{label: label, start: start, ticks: ticks}
	}
	return out
}

// cpuShare is CPU milliseconds per label between two samples.
type cpuShare map[string]float64

func cpuBetween(before, after cpuTicks) cpuShare {
	const tickMS = 10.0 // USER_HZ is 100 on Linux
	out := cpuShare{}
	for pid, a := range after {
		d := a.ticks - before[pid].ticks
		if b, ok := before[pid]; !ok || b.start != a.start {
			d = a.ticks // a new process (or a reused PID)
		}
		if d > 0 {
			out[a.label] += float64(d) * tickMS
		}
	}
	return out
}

// total is the CPU of every label.
func (c cpuShare) total() float64 {
	t := 0.0
	for _, ms := range c {
		t += ms
	}
	return t
}

// String prints the total and the n labels with the most CPU, largest
// first, and the rest summed as "other".
func (c cpuShare) String(n int) string {
	labels := make([]string, 0, len(c))
	for l := range c {
		labels = append(labels, l)
	}
	total := c.total()
	sort.Slice(labels, func(i, j int) bool { return c[labels[i]] > c[labels[j]] })
	other := total
	var parts []string
	for _, l := range labels[:min(n, len(labels))] {
		parts = append(parts, fmt.Sprintf("%s %.2f", l, c[l]))
		other -= c[l]
	}
	return fmt.Sprintf("total %.2f: %s, other %.2f", total, strings.Join(parts, ", "), other)
}

// readStat reads a process's program name, start time and CPU time (user +
// system), both in clock ticks, from dir/stat: "pid (comm) state ppid ...
// utime(14) stime(15) ... starttime(22)".
func readStat(dir string) (comm string, start, ticks int64, ok bool) {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return "", 0, 0, false
	}
	s := string(stat)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, 0, false
	}
	fields := strings.Fields(s[end+1:]) // fields[0] is field 3 (state)
	if len(fields) < 20 {
		return "", 0, 0, false
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	start, _ = strconv.ParseInt(fields[19], 10, 64)
	return s[open+1 : end], start, ut + st, true
}

// stall reads the total time for which at least one runnable task waited
// for a CPU (the "some" line of /proc/pressure/cpu; 0 without PSI).
func stall() time.Duration {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(strings.SplitN(string(b), "\n", 2)[0]) {
		if v, found := strings.CutPrefix(f, "total="); found {
			us, _ := strconv.ParseInt(v, 10, 64)
			return time.Duration(us) * time.Microsecond
		}
	}
	return 0
}
