package host

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one line of the mount table.
type Mount struct {
	Point  string
	FSType string
	Source string
	// Options holds the per-mount and the superblock options, comma-joined.
	Options string
}

// Mounts reads the mount table.
func (h *Host) Mounts() ([]Mount, error) {
	b, err := os.ReadFile(h.MountInfo)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return ParseMountInfo(string(b)), nil
}

// ParseMountInfo parses the text of /proc/<pid>/mountinfo.
func ParseMountInfo(text string) []Mount {
	var out []Mount
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+3 {
			continue
		}
		out = append(out, Mount{
			Point:   unescapeMount(f[4]),
			FSType:  f[sep+1],
			Source:  unescapeMount(f[sep+2]),
			Options: f[5] + "," + f[len(f)-1],
		})
	}
	return out
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountsUnder returns the mount points at or below dir, deepest first.
func (h *Host) MountsUnder(dir string) ([]string, error) {
	ms, err := h.Mounts()
	if err != nil {
		return nil, err
	}
	dir = strings.TrimSuffix(dir, "/")
	var out []string
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out, nil
}

// UnmountUnder unmounts everything mounted at or below dir, deepest first,
// detaching what is busy. It repeats until nothing is left, since one path
// can be mounted over several times.
func (h *Host) UnmountUnder(dir string) error {
	for round := 0; round < 10; round++ {
		points, err := h.MountsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		for _, p := range points {
			if err := unix.Unmount(p, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				_ = unix.Unmount(p, unix.MNT_DETACH)
			}
		}
	}
	points, err := h.MountsUnder(dir)
	if err != nil {
		return err
	}
	if len(points) > 0 {
		return fmt.Errorf("mounts still under %s: %v", dir, points)
	}
	return nil
}
