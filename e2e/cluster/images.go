package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stickynet/stickynet/e2e/images"
)

// imageArchives are the docker-archive files imported into every node.
type imageArchives struct {
	Pause, Toolbox string
}

// buildImages writes the pause and toolbox images into Dir/images.
func (c *Cluster) buildImages(ctx context.Context) (imageArchives, error) {
	ldd, err := c.host.Run(ctx, "ldd", c.bin.Iperf3)
	if err != nil {
		return imageArchives{}, fmt.Errorf("list iperf3's libraries: %w", err)
	}
	src := images.Sources{
		Pause:      c.bin.Pause,
		Busybox:    c.bin.Busybox,
		Iperf3:     c.bin.Iperf3,
		Iperf3Libs: images.SharedLibraries(string(ldd)),
	}
	dir := filepath.Join(c.dir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return imageArchives{}, fmt.Errorf("create image folder: %w", err)
	}
	a := imageArchives{Pause: filepath.Join(dir, "pause.tar"), Toolbox: filepath.Join(dir, "toolbox.tar")}
	pause, err := images.PauseImage(src)
	if err != nil {
		return a, err
	}
	toolbox, err := images.ToolboxImage(src)
	if err != nil {
		return a, err
	}
	if err := images.WriteArchiveFile(a.Pause, pause); err != nil {
		return a, err
	}
	return a, images.WriteArchiveFile(a.Toolbox, toolbox)
}
