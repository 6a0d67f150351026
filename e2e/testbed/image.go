package testbed

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// Image is the controller's container image, built by hack/image.sh into a
// container storage of its own (under Dir), and run by podman with runc.
type Image struct {
	Tag string
	Dir string
	// run is podman's run root: outside Dir, as podman wants a short path.
	run string
}

// BuildImage builds the image from the working tree into storage under dir,
// as `make image` does (buildah, offline, the Dockerfile's own final stage).
func BuildImage(ctx context.Context, dir string) (*Image, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	run, err := os.MkdirTemp("", "ia-run")
	if err != nil {
		return nil, err
	}
	img := &Image{Tag: "localhost/ingress-acme:e2e", Dir: dir, run: run}
	if err := img.writeConfig(); err != nil {
		img.Close()
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "image.sh"), img.Tag)
	cmd.Env = append(img.env(), "VERSION=e2e", "BUILDAH_OPTS="+strings.Join(img.storage(), " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		img.Close()
		return nil, fmt.Errorf("hack/image.sh: %v\n%s", err, out)
	}
	return img, nil
}

// Close removes podman's run root; the storage goes with Dir.
func (img *Image) Close() { _ = os.RemoveAll(img.run) }

// writeConfig writes the containers.conf podman runs with here: runc (crun
// refuses cgroups in hybrid mode) and no default ulimits (setrlimit is refused).
func (img *Image) writeConfig() error {
	conf := "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
	return os.WriteFile(filepath.Join(img.Dir, "containers.conf"), []byte(conf), 0o644)
}

// storage is the buildah/podman options that keep the image under Dir.
func (img *Image) storage() []string {
	return []string{"--root", filepath.Join(img.Dir, "storage"), "--runroot", img.run, "--storage-driver", "vfs"}
}

func (img *Image) env() []string { return append(os.Environ(), img.Env()...) }

// Podman runs podman with args on the image's storage and returns its output.
func (img *Image) Podman(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "podman", append(img.storage(), args...)...)
	cmd.Env = img.env()
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// RunArgs is the command line that runs the image as container name, on the
// host network, with the security settings sec (from the manifest) and the
// paths ro mounted read-only at the same place, passing args to the
// controller; run it with Env. SIGTERM to it reaches the controller.
func (img *Image) RunArgs(name string, sec []string, ro []string, args ...string) []string {
	run := append([]string{"podman"}, img.storage()...)
	run = append(run, "run", "--rm", "--name", name, "--pull", "never", "--network", "host", "--sig-proxy=true")
	run = append(run, sec...)
	for _, p := range ro {
		run = append(run, "--volume", p+":"+p+":ro")
	}
	return append(append(run, img.Tag), args...)
}

// Env is what podman's environment needs besides the process's own.
func (img *Image) Env() []string {
	return []string{"CONTAINERS_CONF=" + filepath.Join(img.Dir, "containers.conf")}
}

// Inspect returns the image's configuration as podman reports it.
func (img *Image) Inspect(ctx context.Context) (ImageInfo, error) {
	out, err := img.Podman(ctx, "image", "inspect", img.Tag)
	if err != nil {
		return ImageInfo{}, err
	}
	var infos []ImageInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 {
		return ImageInfo{}, fmt.Errorf("podman image inspect: %v (%d images)", err, len(infos))
	}
	return infos[0], nil
}

// ImageInfo is what the tests read of an image's configuration.
type ImageInfo struct {
	Size   int64
	Config struct {
		User       string
		Entrypoint []string
	}
}

// Files lists the regular files in the image (from an exported container).
func (img *Image) Files(ctx context.Context) ([]string, error) {
	id, err := img.Podman(ctx, "create", "--pull", "never", img.Tag)
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = img.Podman(context.WithoutCancel(ctx), "rm", "-f", id) }()
	tarPath := filepath.Join(img.Dir, "export.tar")
	defer os.Remove(tarPath)
	if _, err := img.Podman(ctx, "export", "-o", tarPath, id); err != nil {
		return nil, err
	}
	return tarFiles(tarPath)
}

// ManifestSecurity translates the Deployment's pod and container security
// settings in deploy/ingress-acme.yaml into podman flags, and returns its
// termination grace period in seconds. A setting it cannot translate is an
// error, so that the manifest cannot ask for more than the test proves.
func ManifestSecurity() (flags []string, graceSeconds int64, err error) {
	objs, err := Manifest()
	if err != nil {
		return nil, 0, err
	}
	for _, o := range objs {
		if d, ok := o.(*appsv1.Deployment); ok && d.Name == "ingress-acme" {
			spec := d.Spec.Template.Spec
			grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
			if spec.TerminationGracePeriodSeconds != nil {
				grace = *spec.TerminationGracePeriodSeconds
			}
			flags, err := securityFlags(spec.SecurityContext, spec.Containers[0].SecurityContext)
			return flags, grace, err
		}
	}
	return nil, 0, errors.New("deploy/ingress-acme.yaml: no Deployment ingress-acme")
}

// securityFlags translates what pod and ctr set; Kubernetes adds no tmpfs to a
// read-only root file system, so neither does podman here.
func securityFlags(pod *corev1.PodSecurityContext, ctr *corev1.SecurityContext) ([]string, error) {
	if pod == nil || ctr == nil {
		return nil, errors.New("the manifest sets no pod or container securityContext")
	}
	if pod.RunAsUser == nil || pod.RunAsGroup == nil || pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot || *pod.RunAsUser == 0 {
		return nil, errors.New("the manifest's pod securityContext must set runAsNonRoot, a non-zero runAsUser and runAsGroup")
	}
	if sp := pod.SeccompProfile; sp == nil || sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		return nil, errors.New("the manifest's seccompProfile: want RuntimeDefault (podman's default profile)")
	}
	if pod.FSGroup != nil || len(pod.SupplementalGroups) > 0 || pod.SELinuxOptions != nil || len(pod.Sysctls) > 0 {
		return nil, errors.New("the manifest's pod securityContext sets what this test does not translate")
	}
	flags := []string{"--user", strconv.FormatInt(*pod.RunAsUser, 10) + ":" + strconv.FormatInt(*pod.RunAsGroup, 10)}
	if ctr.Privileged != nil || ctr.RunAsUser != nil || ctr.RunAsGroup != nil || ctr.SeccompProfile != nil || ctr.SELinuxOptions != nil || ctr.ProcMount != nil {
		return nil, errors.New("the manifest's container securityContext sets what this test does not translate")
	}
	if ctr.AllowPrivilegeEscalation == nil || *ctr.AllowPrivilegeEscalation {
		return nil, errors.New("the manifest must set allowPrivilegeEscalation: false")
	}
	flags = append(flags, "--security-opt", "no-new-privileges")
	if ctr.ReadOnlyRootFilesystem == nil || !*ctr.ReadOnlyRootFilesystem {
		return nil, errors.New("the manifest must set readOnlyRootFilesystem: true")
	}
	flags = append(flags, "--read-only", "--read-only-tmpfs=false")
	if ctr.Capabilities == nil {
		return nil, errors.New("the manifest must drop capabilities")
	}
	for _, c := range ctr.Capabilities.Drop {
		flags = append(flags, "--cap-drop", string(c))
	}
	for _, c := range ctr.Capabilities.Add {
		flags = append(flags, "--cap-add", string(c))
	}
	return flags, nil
}

// tarFiles lists the regular files of the tar archive at path.
func tarFiles(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var files []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
			files = append(files, strings.TrimPrefix(h.Name, "./"))
		}
	}
}
