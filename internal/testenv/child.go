package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ChildEnv is the variable that, set in a test binary's environment, makes
// its TestMain run a role (RunChild) instead of tests: benchmarks measure a
// server in a process of its own, as it runs in a cluster, so that the
// client's goroutines and garbage do not share its scheduler and collector.
const ChildEnv = "STICKYNET_TEST_CHILD"

// StartChild runs this test binary again with ChildEnv=role and the extra
// environment, and returns the first line the child prints (an address,
// say). The child's stderr goes to a log in t's temporary folder. When t
// ends, the child's stdin is closed (the context RunChild gives its role
// ends), and after 10 s it is killed by its PID.
func StartChild(t testing.TB, role string, env ...string) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), role+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), ChildEnv+"="+role), env...)
	cmd.Stderr = logFile
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", role, err)
	}
	done := make(chan error, 1)
	t.Cleanup(func() {
		_ = stdin.Close()
		var err error
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			err = <-done
			t.Logf("child %s did not stop within 10 s of its stdin closing: killed", role)
		}
		if err != nil {
			log, _ := os.ReadFile(logPath)
			t.Logf("child %s: %v; its log ends:\n%s", role, err, tail(log, 2048))
		}
		logFile.Close()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	go func() {
		_, _ = io.Copy(io.Discard, stdout)
		done <- cmd.Wait()
	}()
	if err != nil {
		log, _ := os.ReadFile(logPath)
		t.Fatalf("child %s printed no line (%v); its log ends:\n%s", role, err, tail(log, 4096))
	}
	return strings.TrimSpace(line)
}

// RunChild is for TestMain: when ChildEnv names a role, it runs that role's
// function and exits; otherwise it returns. The function's context ends when
// the parent closes the child's stdin (or goes away); the function prints its
// first line to stdout and returns when it has stopped.
func RunChild(roles map[string]func(ctx context.Context) error) {
	role := os.Getenv(ChildEnv)
	if role == "" {
		return
	}
	fn, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "%s=%q: not a role of this test binary\n", ChildEnv, role)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	if err := fn(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Serve runs srv on ln, with TLS when srv.TLSConfig is set, until ctx ends.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
