package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Tools holds the paths of the binaries and files the testbed runs, as installed
// by hack/tools.sh at the versions pinned in hack/tools.env.
type Tools struct {
	RepoRoot string            // folder holding go.mod
	CacheDir string            // as printed by `hack/tools.sh dir`
	Versions map[string]string // hack/tools.env, e.g. "ETCD_VERSION" -> "3.6.16"

	Etcd          string
	KubeAPIServer string
	Kubectl       string
	Pebble        string
	ChallTestSrv  string
	PebbleMiniCA  string // pebble.minica.pem: CA of Pebble's own serving certificate
	PebbleCert    string // cert.pem: Pebble's serving certificate (localhost, 127.0.0.1)
	PebbleKey     string // key.pem
	Traefik       string

	// Data planes besides Traefik, started on first use (Testbed.DataPlane);
	// FindTools does not require them.
	HAProxyIngress       string // haproxy-ingress; it runs Debian's haproxy from PATH
	HAProxyIngressRootfs string // its module's rootfs/ (templates, Lua scripts)
	Skipper              string
}

// RepoRoot walks up from the working directory to the folder that holds go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testbed: no go.mod in the working directory or above")
		}
		dir = parent
	}
}

// parseEnvFile reads KEY=VALUE lines; blank lines and # comments are skipped and
// one level of surrounding quotes is removed from values.
func parseEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: not KEY=VALUE: %q", path, i+1, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		vars[strings.TrimSpace(k)] = v
	}
	return vars, nil
}

// FindTools locates the testbed's binaries in the tool cache. When any of them is
// missing it runs hack/tools.sh, streaming its output to logf, and looks again:
// a missing tool is installed, never a reason to skip. Concurrent installers
// (other test binaries, make tools) are serialized by the script's file lock.
func FindTools(ctx context.Context, logf func(string, ...any)) (*Tools, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	vers, err := parseEnvFile(filepath.Join(root, "hack", "tools.env"))
	if err != nil {
		return nil, fmt.Errorf("testbed: tool versions: %w", err)
	}
	for _, k := range []string{"ETCD_VERSION", "KUBERNETES_VERSION", "PEBBLE_VERSION", "TRAEFIK_VERSION"} {
		if vers[k] == "" {
			return nil, fmt.Errorf("testbed: hack/tools.env sets no %s", k)
		}
	}
	script := filepath.Join(root, "hack", "tools.sh")
	out, err := exec.CommandContext(ctx, script, "dir").Output()
	if err != nil {
		return nil, fmt.Errorf("testbed: %s dir: %w", script, err)
	}
	cache := strings.TrimSpace(string(out))
	if cache == "" {
		return nil, fmt.Errorf("testbed: %s dir printed nothing", script)
	}
	dir := func(tool, key string) string { return filepath.Join(cache, tool+"-"+vers[key]) }
	etcd, kube, pebble, traefik := dir("etcd", "ETCD_VERSION"), dir("kubernetes", "KUBERNETES_VERSION"),
		dir("pebble", "PEBBLE_VERSION"), dir("traefik", "TRAEFIK_VERSION")
	t := &Tools{
		RepoRoot:      root,
		CacheDir:      cache,
		Versions:      vers,
		Etcd:          filepath.Join(etcd, "etcd"),
		KubeAPIServer: filepath.Join(kube, "kube-apiserver"),
		Kubectl:       filepath.Join(kube, "kubectl"),
		Pebble:        filepath.Join(pebble, "pebble"),
		ChallTestSrv:  filepath.Join(pebble, "pebble-challtestsrv"),
		PebbleMiniCA:  filepath.Join(pebble, "pebble.minica.pem"),
		PebbleCert:    filepath.Join(pebble, "cert.pem"),
		PebbleKey:     filepath.Join(pebble, "key.pem"),
		Traefik:       filepath.Join(traefik, "traefik"),

		HAProxyIngress:       filepath.Join(dir("haproxy-ingress", "HAPROXY_INGRESS_VERSION"), "haproxy-ingress"),
		HAProxyIngressRootfs: filepath.Join(dir("haproxy-ingress", "HAPROXY_INGRESS_VERSION"), "rootfs"),
		Skipper:              filepath.Join(dir("skipper", "SKIPPER_VERSION"), "skipper"),
	}
	missing := t.missing(etcd, kube, pebble, traefik)
	if len(missing) == 0 {
		return t, nil
	}
	logf("testbed: missing %s: running %s (a cold build takes about 15 minutes)", strings.Join(missing, ", "), script)
	if err := runStreaming(ctx, logf, script); err != nil {
		return nil, fmt.Errorf("testbed: %s: %w", script, err)
	}
	if missing := t.missing(etcd, kube, pebble, traefik); len(missing) > 0 {
		return nil, fmt.Errorf("testbed: still missing after %s: %s", script, strings.Join(missing, ", "))
	}
	return t, nil
}

// missing lists tool folders without their .complete marker, and files absent
// from complete folders.
func (t *Tools) missing(dirs ...string) []string {
	var m []string
	incomplete := map[string]bool{}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, ".complete")); err != nil {
			m = append(m, d)
			incomplete[d] = true
		}
	}
	for _, f := range []string{t.Etcd, t.KubeAPIServer, t.Pebble, t.ChallTestSrv, t.PebbleMiniCA, t.PebbleCert, t.PebbleKey, t.Traefik} {
		if _, err := os.Stat(f); err != nil && !incomplete[filepath.Dir(f)] {
			m = append(m, f)
		}
	}
	return m
}

// runStreaming runs a command, sending each line of its stdout and stderr to logf.
func runStreaming(ctx context.Context, logf func(string, ...any), name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	// Its own process group, so that cancelling ctx also ends the go builds it runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			logf("%s", sc.Text())
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	err := cmd.Run()
	_ = w.Close()
	<-done
	return err
}
