package host

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Process is one entry of /proc.
type Process struct {
	PID, PPID int
	// Start is the process's start time in clock ticks since boot; with the
	// PID it names one process even after the PID is reused.
	Start uint64
	// Cmdline is the argument vector joined by spaces.
	Cmdline string
	// Cgroups is the text of /proc/<pid>/cgroup.
	Cgroups string
	// Zombie is true for a process that has exited but was not reaped.
	Zombie bool
}

// Processes lists the machine's processes; those that vanish while being
// read are left out.
func (h *Host) Processes() ([]Process, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := ReadProcess(pid)
		if err != nil {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// ReadProcess reads one process from /proc.
func ReadProcess(pid int) (Process, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Process{}, fmt.Errorf("read process %d: %w", pid, err)
	}
	p, err := parseStat(pid, string(stat))
	if err != nil {
		return Process{}, err
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		p.Cmdline = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil {
		p.Cgroups = string(b)
	}
	return p, nil
}

// parseStat reads state, parent and start time from /proc/<pid>/stat, whose
// second field (the command name in parentheses) may hold spaces.
func parseStat(pid int, stat string) (Process, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return Process{}, fmt.Errorf("parse stat of process %d: no command name", pid)
	}
	f := strings.Fields(stat[i+1:])
	// After the name: state(0) ppid(1) ... starttime is field 22 overall, 19 here.
	if len(f) < 20 {
		return Process{}, fmt.Errorf("parse stat of process %d: %d fields", pid, len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Process{}, fmt.Errorf("parse parent of process %d: %w", pid, err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Process{}, fmt.Errorf("parse start time of process %d: %w", pid, err)
	}
	return Process{PID: pid, PPID: ppid, Start: start, Zombie: f[0] == "Z"}, nil
}

// Alive reports whether the process pid that started at start still runs.
func Alive(pid int, start uint64) bool {
	p, err := ReadProcess(pid)
	return err == nil && p.Start == start && !p.Zombie
}
