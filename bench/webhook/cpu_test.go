package webhook

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/stickynet/stickynet/internal/testenv"
)

// cpuTicks is the CPU time (user + system, in clock ticks) of every process
// on the machine, by PID, with a label per process: where the time of a
// creation goes.
type cpuTicks map[int]struct {
	label string
	ticks int64
}

// sampleCPU reads /proc. Processes are labelled by their program name; the
// two etcds apart (the cluster's, in the cluster's folder, and stickynet's),
// this test process (the clients) as "bench" and its children by role.
func sampleCPU() cpuTicks {
	out := cpuTicks{}
	self := os.Getpid()
	selfComm, _, _ := readStat("/proc/self")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		label, ticks, ok := readStat(d)
		if !ok {
			continue
		}
		switch {
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
		out[pid] = struct {
			label string
			ticks int64
		}{label, ticks}
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
		if before[pid].label != a.label {
			d = a.ticks // a new process (or a reused PID)
		}
		if d > 0 {
			out[a.label] += float64(d) * tickMS
		}
	}
	return out
}

// top returns the labels with the most CPU, largest first, and the rest
// summed as "other".
func (c cpuShare) top(n int) ([]string, float64) {
	labels := make([]string, 0, len(c))
	for l := range c {
		labels = append(labels, l)
	}
	sort.Slice(labels, func(i, j int) bool { return c[labels[i]] > c[labels[j]] })
	other := 0.0
	if len(labels) > n {
		for _, l := range labels[n:] {
			other += c[l]
		}
		labels = labels[:n]
	}
	return labels, other
}

// readStat reads a process's program name and its CPU time (user +
// system, in clock ticks) from dir/stat: "pid (comm) state ppid ... utime(14)
// stime(15)".
func readStat(dir string) (comm string, ticks int64, ok bool) {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return "", 0, false
	}
	s := string(stat)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, false
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 13 {
		return "", 0, false
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return s[open+1 : end], ut + st, true
}
