// Command image writes stickynet's container image as a docker-archive tar,
// without a container engine (package images):
//
//	image [-bin DIR] [-name NAME] -o FILE
//
// `make image` runs it after `make build`.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/stickynet/stickynet/e2e/images"
)

func main() {
	bin := flag.String("bin", "_output/bin", "folder holding the binaries make build writes")
	name := flag.String("name", images.Stickynet, "the image's name and tag (repository:tag)")
	out := flag.String("o", "", "the docker-archive tar to write")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "image: -o FILE is required")
		os.Exit(2)
	}
	if err := write(*bin, *name, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s (%s)\n", *out, *name)
}

func write(bin, name, out string) error {
	src, err := images.FindStickynetSources(bin)
	if err != nil {
		return err
	}
	img, err := images.StickynetImage(name, src)
	if err != nil {
		return err
	}
	return images.WriteArchiveFile(out, img)
}
