package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Etcd is a real etcd server process started for a test. Its data directory
// and ports survive Kill and Restart, as a crashed member's would.
type Etcd struct {
	Endpoint string // http://127.0.0.1:<port>
	bin      string
	dir      string
	args     []string
	logPath  string
	startCmd func(*exec.Cmd) error
	cmd      *exec.Cmd
	done     chan struct{}
}

// StartEtcd starts etcd (built by `make tools`) on free loopback ports with its
// data in a temporary folder; the test's cleanup stops it. Extra flags are passed
// to etcd as given.
func StartEtcd(t testing.TB, extra ...string) *Etcd {
	t.Helper()
	return startEtcd(t, EtcdOptions{Extra: extra})
}

// StartEtcdTLS is StartEtcd serving https and requiring client certificates.
func StartEtcdTLS(t testing.TB, tls EtcdTLS) *Etcd {
	t.Helper()
	return startEtcd(t, EtcdOptions{TLS: &tls})
}

func startEtcd(t testing.TB, opts EtcdOptions) *Etcd {
	t.Helper()
	Integration(t)
	opts.Binary = NeedTool(t, "etcd", "etcd")
	opts.Dir = t.TempDir()
	// Started from one long-lived thread: Pdeathsig fires when the forking
	// thread ends, and Go ends threads that goroutines leave locked (see spawner).
	sp := newSpawner()
	opts.Start = func(cmd *exec.Cmd) error {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return sp.start(cmd)
	}
	e, err := RunEtcd(opts)
	if err != nil {
		sp.close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Stop()
		sp.close()
		if t.Failed() {
			if b, err := os.ReadFile(e.logPath); err == nil && len(b) > 0 {
				t.Logf("etcd log (last 4 KiB):\n%s", tail(b, 4096))
			}
		}
	})
	return e
}

// EtcdOptions configures an etcd server started by RunEtcd.
type EtcdOptions struct {
	// Binary is the etcd binary; empty means the one `make tools` built.
	Binary string
	// Dir holds the data folder and etcd.log.
	Dir string
	// Extra flags are passed to etcd as given.
	Extra []string
	// Start starts the prepared command (and again on Restart); nil means
	// cmd.Start. The local cluster passes one that starts etcd in its cgroup.
	Start func(cmd *exec.Cmd) error
	// TLS, if set, serves clients over https only and, unless AnyClient,
	// requires a client certificate signed by CAFile.
	TLS *EtcdTLS
}

// EtcdTLS is the server side of a TLS-secured etcd.
type EtcdTLS struct {
	CAFile, CertFile, KeyFile string
	// AnyClient serves clients without a certificate too (TLS on the
	// server's side only).
	AnyClient bool
}

// RunEtcd starts etcd on free loopback ports with its data under opts.Dir and
// waits until it serves; the caller stops it. StartEtcd is the form for tests.
func RunEtcd(opts EtcdOptions) (*Etcd, error) {
	bin := opts.Binary
	if bin == "" {
		p, err := Tool("etcd", "etcd")
		if err != nil {
			return nil, err
		}
		bin = p
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create etcd folder: %w", err)
	}
	client, err := FreePort()
	if err != nil {
		return nil, err
	}
	peer, err := FreePort()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if opts.TLS != nil {
		scheme = "https"
	}
	e := &Etcd{
		Endpoint: fmt.Sprintf("%s://127.0.0.1:%d", scheme, client),
		bin:      bin,
		dir:      opts.Dir,
		logPath:  filepath.Join(opts.Dir, "etcd.log"),
		startCmd: opts.Start,
	}
	e.args = append([]string{
		"--name=test", "--data-dir=" + e.DataDir(),
		"--listen-client-urls=" + e.Endpoint, "--advertise-client-urls=" + e.Endpoint,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", peer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", peer),
		fmt.Sprintf("--initial-cluster=test=http://127.0.0.1:%d", peer),
		"--log-level=warn", "--quota-backend-bytes=8589934592",
	}, opts.Extra...)
	if t := opts.TLS; t != nil {
		e.args = append(e.args, "--cert-file="+t.CertFile, "--key-file="+t.KeyFile)
		if !t.AnyClient {
			e.args = append(e.args, "--trusted-ca-file="+t.CAFile, "--client-cert-auth")
		}
	}
	if err := e.start(); err != nil {
		return nil, err
	}
	return e, nil
}

// LogPath is the file etcd's output goes to.
func (e *Etcd) LogPath() string { return e.logPath }

func (e *Etcd) start() error {
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(e.bin, e.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	startCmd := e.startCmd
	if startCmd == nil {
		startCmd = (*exec.Cmd).Start
	}
	if err := startCmd(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	e.cmd, e.done = cmd, done
	return e.waitHealthy(30 * time.Second)
}

func (e *Etcd) waitHealthy(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, addr, _ := strings.Cut(e.Endpoint, "://")
	for {
		select {
		case <-e.done:
			return fmt.Errorf("etcd exited at start; see %s", e.logPath)
		case <-ctx.Done():
			return fmt.Errorf("etcd not serving on %s after %s; see %s", addr, timeout, e.logPath)
		case <-time.After(50 * time.Millisecond):
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
	}
}

// PID returns the process ID of the running etcd.
func (e *Etcd) PID() int { return e.cmd.Process.Pid }

// Kill sends SIGKILL and waits for the process to be gone (a crash).
func (e *Etcd) Kill() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGKILL)
	<-e.done
	e.cmd = nil
}

// DataDir is etcd's data folder. Between Kill and Restart a test may
// replace it, with an earlier copy for one, as a restore from a backup does.
func (e *Etcd) DataDir() string { return filepath.Join(e.dir, "data") }

// Restart starts etcd again on the same data and ports after Kill.
func (e *Etcd) Restart() error { return e.start() }

// Stop terminates etcd (SIGTERM, then SIGKILL after 10 s).
func (e *Etcd) Stop() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		_ = e.cmd.Process.Signal(syscall.SIGKILL)
		<-e.done
	}
	e.cmd = nil
}

// FreePort returns a TCP port that is free on 127.0.0.1 at the time of the call.
//
// A port is handed out once per process: the kernel may give a port just
// closed to the next bind, so two calls in a row (etcd's client and peer
// ports) or at once (a cluster's servers) could get the same one (22 times
// in 200,000 pairs, as a review measured), and the second server failed
// with "address already in use".
func FreePort() (int, error) {
	handedMu.Lock()
	defer handedMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !handed[port] {
			handed[port] = true
			return port, nil
		}
	}
	return 0, errors.New("find a free port: the kernel gave only ports handed out before, 100 times")
}

var (
	handedMu sync.Mutex
	handed   = map[int]bool{} // ports FreePort handed out
)

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
