package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestSharedLibraries(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"debian iperf3", `	linux-vdso.so.1 (0x00007ffc)
	libiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007f7a)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7b)
	/lib64/ld-linux-x86-64.so.2 (0x00007f7c)
`, []string{"/lib/x86_64-linux-gnu/libiperf.so.0", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}},
		{"static", "\tnot a dynamic executable\n", nil},
		{"missing library", "\tlibfoo.so => not found\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SharedLibraries(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("SharedLibraries() = %q, want %q", got, tt.want)
			}
		})
	}
}

func readTar(t *testing.T, b []byte) (names []string, files map[string][]byte) {
	t.Helper()
	files = map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, files
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		data, _ := io.ReadAll(tr)
		files[h.Name] = data
	}
}

func TestLayerAddsParentsSortedAndStable(t *testing.T) {
	img := Image{Files: []File{
		{Path: "/usr/bin/iperf3", Mode: 0o755, Data: []byte("x")},
		{Path: "/bin/sh", Link: "busybox"},
		{Path: "bin/busybox", Mode: 0o755, Data: []byte("bb")},
	}}
	a, err := Layer(img)
	if err != nil {
		t.Fatal(err)
	}
	names, _ := readTar(t, a)
	want := []string{"bin/", "bin/busybox", "bin/sh", "usr/", "usr/bin/", "usr/bin/iperf3"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("layer entries = %q, want %q", names, want)
	}
	b, _ := Layer(img)
	if !bytes.Equal(a, b) {
		t.Error("the same image gave two different layers")
	}
}

func TestWriteArchiveManifestMatchesContent(t *testing.T) {
	var buf bytes.Buffer
	img := Image{Name: Pause, Entrypoint: []string{"/pause"}, Files: []File{{Path: "/pause", Mode: 0o755, Data: []byte("p")}}}
	if err := WriteArchive(&buf, img); err != nil {
		t.Fatal(err)
	}
	_, files := readTar(t, buf.Bytes())
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || !reflect.DeepEqual(manifest[0].RepoTags, []string{Pause}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v", manifest)
	}
	layer := files[manifest[0].Layers[0]]
	if manifest[0].Config != digest(files[manifest[0].Config])+".json" {
		t.Error("config file name is not its digest")
	}
	var config struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
		Config struct{ Entrypoint []string }
	}
	if err := json.Unmarshal(files[manifest[0].Config], &config); err != nil {
		t.Fatal(err)
	}
	if want := "sha256:" + digest(layer); len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != want {
		t.Errorf("diff_ids = %v, want [%s]", config.RootFS.DiffIDs, want)
	}
	if !reflect.DeepEqual(config.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("entrypoint = %v", config.Config.Entrypoint)
	}
}

// FindStickynetSources refuses a program linked dynamically: the image has
// no C library of its own for it (only ovs-vsctl's, by chance).
func TestStickynetSourcesStatic(t *testing.T) {
	dir := t.TempDir()
	for _, n := range StickynetBinaries {
		if err := os.Symlink("/usr/bin/ovs-vsctl", filepath.Join(dir, n)); err != nil { // a dynamic one
			t.Fatal(err)
		}
	}
	if _, err := FindStickynetSources(dir); err == nil || !strings.Contains(err.Error(), "is linked dynamically: build it with CGO_ENABLED=0") {
		t.Errorf("sources with dynamically linked programs: %v; want them refused", err)
	}
}
