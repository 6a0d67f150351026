package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// image builds the container image as `make image` does (buildah, offline)
// and reports its size and how long the build took.
func (b *bench) image(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "bench-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	t0 := time.Now()
	img, err := testbed.BuildImage(ctx, dir)
	if err != nil {
		return err
	}
	defer img.Close()
	took := time.Since(t0)
	info, err := img.Inspect(ctx)
	if err != nil {
		return err
	}
	files, err := img.Files(ctx)
	if err != nil {
		return err
	}
	b.add("image size (static binary, CA certificates, passwd/group; user "+info.Config.User+")",
		fmt.Sprintf("%.1f MB, %d files", float64(info.Size)/1e6, len(files)), "", "")
	b.add("image build (buildah, warm Go cache)", fmt.Sprintf("%.1f s", took.Seconds()), "", "")
	return nil
}
