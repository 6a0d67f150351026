package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// The container image users run holds the static binary, the CA certificates
// and the passwd/group of user 65532, nothing else (no shell); under podman
// with runc and the manifest's securityContext (non-root, read-only root file
// system, no capabilities, no privilege escalation) on the host network it
// issues and serves a certificate, and SIGTERM stops it cleanly within the
// manifest's grace period.
func TestImageRunsUnderManifestSecurityContext(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"podman", "buildah", "runc"} {
		lookPath(t, tool)
	}
	ctx := t.Context()
	img, err := testbed.BuildImage(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(img.Close)
	checkImageContents(t, img)
	sec, grace, err := testbed.ManifestSecurity()
	if err != nil {
		t.Fatal(err)
	}

	ns := newNamespace(t)
	ctl := newController(t, ns)
	name := "ingress-acme-" + ns
	mounts := readableByContainer(t, ctl.Args, "--kubeconfig", "--acme-ca-bundle")
	ctl.Args = img.RunArgs(name, sec, mounts, ctl.Args[1:]...)
	ctl.Env = img.Env()
	t.Cleanup(func() { _, _ = img.Podman(context.Background(), "rm", "--force", "--ignore", name) })
	ctl.start()
	checkContainerProcess(t, img, name)

	startBackend(t, ns, "web")
	h := host(ns, "boxed")
	createIngress(t, newIngress(ns, "boxed", "web", true, h))
	_, leaf := waitCertificate(t, ns, "boxed-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)

	stopped := time.Now()
	if code := ctl.Stop(); code != 0 {
		t.Errorf("exit code after SIGTERM: got %d, want 0 (the test kills after 10 s, the manifest's grace period is %d s):\n%s", code, grace, ctl.LogTail(20))
	}
	t.Logf("SIGTERM to exit: %.2f s (grace period %d s)", time.Since(stopped).Seconds(), grace)
	if out, err := img.Podman(ctx, "ps", "--all", "--quiet", "--filter", "name="+name); err != nil || out != "" {
		t.Errorf("containers left after the stop: got %q (%v), want none", out, err)
	}
}

// readableByContainer copies the files that args name after flags into a
// folder that the container's user can read (as a kubelet mounts a Secret),
// points args at the copies, and returns the folder, to mount.
func readableByContainer(t *testing.T, args []string, flags ...string) []string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ia-mount")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(args); i++ {
		if !slices.Contains(flags, args[i]) {
			continue
		}
		b, err := os.ReadFile(args[i+1])
		if err != nil {
			t.Fatal(err)
		}
		args[i+1] = filepath.Join(dir, strings.TrimPrefix(args[i], "--"))
		if err := os.WriteFile(args[i+1], b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return []string{dir}
}

// checkImageContents checks the image's files, user and entry point.
func checkImageContents(t *testing.T, img *testbed.Image) {
	t.Helper()
	files, err := img.Files(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	want := []string{"etc/group", "etc/passwd", "etc/ssl/certs/ca-certificates.crt", "ingress-acme"}
	if !slices.Equal(files, want) {
		t.Errorf("image files: got %v, want %v", files, want)
	}
	info, err := img.Inspect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.User != "65532:65532" || !slices.Equal(info.Config.Entrypoint, []string{"/ingress-acme"}) {
		t.Errorf("image config: got user %q, entrypoint %v, want 65532:65532, [/ingress-acme]", info.Config.User, info.Config.Entrypoint)
	}
	t.Logf("image %s: %d bytes, files %v, user %s", img.Tag, info.Size, files, info.Config.User)
}

// checkContainerProcess checks the running controller as the kernel sees it:
// uid and gid 65532, no effective capabilities, no_new_privs, and a read-only
// root file system.
func checkContainerProcess(t *testing.T, img *testbed.Image, name string) {
	t.Helper()
	out, err := img.Podman(t.Context(), "inspect", "--type", "container", name)
	if err != nil {
		t.Fatal(err)
	}
	var cs []struct {
		State      struct{ Pid int }
		HostConfig struct{ ReadonlyRootfs bool }
	}
	if err := json.Unmarshal([]byte(out), &cs); err != nil || len(cs) != 1 {
		t.Fatalf("podman inspect: %v (%d containers)", err, len(cs))
	}
	if !cs[0].HostConfig.ReadonlyRootfs {
		t.Error("root file system: got writable, want read-only")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cs[0].State.Pid))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Uid": "65532 65532 65532 65532", "Gid": "65532 65532 65532 65532", "CapEff": "0000000000000000", "CapPrm": "0000000000000000", "NoNewPrivs": "1"}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[k]; ok {
			if got := strings.Join(strings.Fields(v), " "); got != w {
				t.Errorf("controller process %s: got %q, want %q", k, got, w)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("controller process status lacks %v", want)
	}
}
