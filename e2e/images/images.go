// Package images builds container images without a container engine: a
// single-layer image is written as a docker-archive tar (the format `docker
// save` writes and `docker load`, `ctr images import` and `skopeo copy
// docker-archive:` read), from files of the host. The local cluster's pause
// image holds the pause program that hack/build-tools.sh builds; its
// toolbox image holds Debian's static busybox and iperf3 with the shared
// libraries it links; stickynet's own image (`make image`) holds its four
// static binaries and Open vSwitch's ovs-vsctl and ovs-ofctl with theirs.
package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Names of the images the local cluster imports into every node.
const (
	// Pause is the pod sandbox image, pinned in each node's containerd.
	Pause = "stickynet.local/pause:3.10"
	// Toolbox is the test image: busybox (sh, ping, nc, ip, wget, ...) and iperf3.
	Toolbox = "stickynet.local/toolbox:v1"
	// Stickynet is the default name of stickynet's image (make image IMAGE=...).
	Stickynet = "stickynet.local/stickynet:dev"
)

// File is one entry of an image's layer.
type File struct {
	// Path is absolute inside the image.
	Path string
	// Mode holds the permission bits (and fs.ModeDir for a directory).
	Mode int64
	// Data is the content of a regular file.
	Data []byte
	// Link, if set, makes the entry a symbolic link to Link.
	Link string
	// Dir makes the entry a directory.
	Dir bool
}

// Image is a single-layer image.
type Image struct {
	Name       string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// epoch is the modification time of every entry, so that the same inputs
// give the same image ID.
var epoch = time.Unix(0, 0).UTC()

// Layer returns the uncompressed layer tar of img: parent folders are added
// where missing, entries are sorted by path, owned by root, dated at epoch.
func Layer(img Image) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range img.Files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			continue
		}
		f.Path = p
		entries[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = File{Path: d, Dir: true, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := entries[p]
		hdr := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: f.Mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case f.Dir:
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		case f.Link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, f.Link, 0o777
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("write layer file %s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img as a docker-archive tar to w.
func WriteArchive(w io.Writer, img Image) error {
	layer, err := Layer(img)
	if err != nil {
		return err
	}
	layerDigest := digest(layer)
	env := img.Env
	if len(env) == 0 {
		env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	config := map[string]any{
		"architecture": runtime.GOARCH, // the host's files are in it: built where it runs
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config":       map[string]any{"Env": env, "Entrypoint": img.Entrypoint, "Cmd": img.Cmd},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerDigest}},
		"history":      []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "stickynet e2e/images"}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return fmt.Errorf("encode image config: %w", err)
	}
	configName := digest(configJSON) + ".json"
	layerName := layerDigest + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{img.Name}, "Layers": []string{layerName},
	}})
	if err != nil {
		return fmt.Errorf("encode image manifest: %w", err)
	}
	tw := tar.NewWriter(w)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, configJSON}, {layerName, layer}, {"manifest.json", manifest}} {
		if dir := path.Dir(e.name); dir != "." {
			if err := tw.WriteHeader(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
				return fmt.Errorf("write archive folder %s: %w", dir, err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			return fmt.Errorf("write archive entry %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("write archive entry %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close archive: %w", err)
	}
	return nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// SharedLibraries parses the output of `ldd BINARY` into the absolute paths
// of the libraries and the loader it names (the vDSO has no file and is left
// out).
func SharedLibraries(lddOutput string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(lddOutput))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "=>"); i >= 0 {
			line = strings.TrimSpace(line[i+2:])
		}
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "/") {
			out = append(out, f[0])
		}
	}
	return out
}

// BusyboxApplets are the commands the toolbox image links to busybox.
var BusyboxApplets = []string{
	"sh", "ash", "cat", "echo", "sleep", "ls", "ping", "ip", "ifconfig", "route", "arp",
	"hostname", "nc", "wget", "ps", "kill", "true", "false", "env", "date", "mkdir",
	"rm", "grep", "sed", "awk", "head", "tail", "wc", "cut", "tr", "printf", "test",
	"seq", "timeout", "uname", "id", "mount", "df", "sync", "touch", "tee", "vi",
}

// Sources are the host files the images are made of.
type Sources struct {
	// Pause is the pause program (hack/build-tools.sh images).
	Pause string
	// Busybox is a static busybox (Debian's busybox-static: /bin/busybox).
	Busybox string
	// Iperf3 is the iperf3 binary; Iperf3Libs the libraries and loader it needs.
	Iperf3     string
	Iperf3Libs []string
}

// ToolboxImage returns the toolbox image made from src.
func ToolboxImage(src Sources) (Image, error) {
	img := Image{Name: Toolbox, Cmd: []string{"/bin/sh"}}
	bb, err := os.ReadFile(src.Busybox)
	if err != nil {
		return Image{}, fmt.Errorf("read busybox: %w", err)
	}
	img.Files = append(img.Files, File{Path: "/bin/busybox", Mode: 0o755, Data: bb})
	for _, a := range BusyboxApplets {
		img.Files = append(img.Files, File{Path: "/bin/" + a, Link: "busybox"})
	}
	ip, err := os.ReadFile(src.Iperf3)
	if err != nil {
		return Image{}, fmt.Errorf("read iperf3: %w", err)
	}
	img.Files = append(img.Files, File{Path: "/usr/bin/iperf3", Mode: 0o755, Data: ip})
	for _, lib := range src.Iperf3Libs {
		b, err := os.ReadFile(lib) // follows the symlinks of merged /usr
		if err != nil {
			return Image{}, fmt.Errorf("read iperf3 library: %w", err)
		}
		img.Files = append(img.Files, File{Path: lib, Mode: 0o755, Data: b})
	}
	img.Files = append(img.Files,
		File{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		File{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		File{Path: "/tmp", Dir: true, Mode: 0o1777},
		File{Path: "/root", Dir: true, Mode: 0o700},
	)
	return img, nil
}

// StickynetSources are the host files stickynet's image is made of.
type StickynetSources struct {
	// Binaries are stickynet's programs, linked statically (make build):
	// their names in /usr/local/bin, and their paths on the host.
	Binaries map[string]string
	// OVS are the paths of ovs-vsctl and ovs-ofctl, installed in the image
	// under their paths; OVSLibs the libraries and loader they need (ldd).
	OVS, OVSLibs []string
}

// StickynetBinaries are the names of stickynet's programs, as make build
// names them in its folder and the chart runs them from /usr/local/bin.
var StickynetBinaries = []string{"stickynet-webhook", "stickynet-extender", "stickynet-nodeagent", "stickynet"}

// FindStickynetSources finds stickynet's image's files: its programs in
// binDir, and this machine's ovs-vsctl and ovs-ofctl (Debian's
// openvswitch-common) with the libraries ldd names for them.
func FindStickynetSources(binDir string) (StickynetSources, error) {
	src := StickynetSources{Binaries: map[string]string{}}
	for _, n := range StickynetBinaries {
		p := filepath.Join(binDir, n)
		if err := static(p); err != nil {
			return src, fmt.Errorf("stickynet image: %w", err)
		}
		src.Binaries[n] = p
	}
	libs := map[string]bool{}
	for _, tool := range []string{"ovs-vsctl", "ovs-ofctl"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			return src, fmt.Errorf("stickynet image: %w (Debian's openvswitch-common has it)", err)
		}
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			return src, fmt.Errorf("stickynet image: ldd %s: %w", p, err)
		}
		src.OVS = append(src.OVS, p)
		for _, l := range SharedLibraries(string(out)) {
			if !libs[l] {
				libs[l] = true
				src.OVSLibs = append(src.OVSLibs, l)
			}
		}
	}
	return src, nil
}

// static checks that the program at p is linked statically (no program
// interpreter): the image has only the C library ovs-vsctl needs, and the
// agent copies the CNI plugin onto nodes whose C library is not this one.
func static(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%w (make build writes it)", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is linked dynamically: build it with CGO_ENABLED=0, as make build does", p)
		}
	}
	return nil
}

// WriteArchiveFile writes img as a docker-archive tar to the file at p.
func WriteArchiveFile(p string, img Image) error {
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("create image archive: %w", err)
	}
	werr := WriteArchive(f, img)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %s: %w", img.Name, werr)
	}
	if cerr != nil {
		return fmt.Errorf("write %s: %w", img.Name, cerr)
	}
	return nil
}

// nonroot is the user the chart runs the webhook, extender and scheduler as.
const nonroot = 65532

// StickynetImage returns stickynet's image, named name, made from src: what
// the chart's containers run (image.repository, image.tag).
func StickynetImage(name string, src StickynetSources) (Image, error) {
	if len(src.Binaries) == 0 || len(src.OVS) == 0 {
		return Image{}, fmt.Errorf("stickynet image: binaries %v and Open vSwitch tools %v: want both", src.Binaries, src.OVS)
	}
	img := Image{Name: name}
	add := func(dst, from string, mode int64) error {
		b, err := os.ReadFile(from) // follows the symlinks of merged /usr
		if err != nil {
			return fmt.Errorf("stickynet image: %w", err)
		}
		img.Files = append(img.Files, File{Path: dst, Mode: mode, Data: b})
		return nil
	}
	for n, p := range src.Binaries {
		if err := add("/usr/local/bin/"+n, p, 0o755); err != nil {
			return Image{}, err
		}
	}
	for _, p := range append(append([]string{}, src.OVS...), src.OVSLibs...) {
		if err := add(p, p, 0o755); err != nil {
			return Image{}, err
		}
	}
	img.Files = append(img.Files,
		File{Path: "/etc/passwd", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot)},
		File{Path: "/etc/group", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", nonroot)},
		File{Path: "/tmp", Dir: true, Mode: 0o1777},
		File{Path: "/root", Dir: true, Mode: 0o700},
		File{Path: "/home/nonroot", Dir: true, Mode: 0o755},
	)
	return img, nil
}

// PauseImage returns the pause image made from src.
func PauseImage(src Sources) (Image, error) {
	b, err := os.ReadFile(src.Pause)
	if err != nil {
		return Image{}, fmt.Errorf("read pause: %w", err)
	}
	return Image{Name: Pause, Entrypoint: []string{"/pause"}, Files: []File{{Path: "/pause", Mode: 0o755, Data: b}}}, nil
}
