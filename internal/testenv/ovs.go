package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// OVS is a private Open vSwitch for a test: its own ovsdb-server and
// ovs-vswitchd with their database, run folder and sockets in a temporary
// folder, optionally inside a network namespace. Bridges use the userspace
// datapath unless a test asks otherwise (this machine has no OVS kernel module).
type OVS struct {
	// DB is ovsdb-server's socket as ovs-vsctl --db takes it (unix:<path>).
	DB string
	// RunDir holds the sockets, including each bridge's <bridge>.mgmt.
	RunDir string
	// Netns is the namespace ovs-vswitchd runs in ("" for the test's own).
	Netns string

	procs   []*exec.Cmd
	spawner *spawner
}

// StartOVS starts ovsdb-server and ovs-vswitchd (the openvswitch-switch
// package's binaries) in netns (a path; "" means the test's namespace) and
// stops them by PID when the test ends. Their logs are shown if the test fails.
func StartOVS(t testing.TB, netns string) *OVS {
	t.Helper()
	Root(t)
	for _, c := range []string{"ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl"} {
		NeedCommand(t, c)
	}
	schema := "/usr/share/openvswitch/vswitch.ovsschema"
	if _, err := os.Stat(schema); err != nil {
		t.Fatalf("OVS schema: %v: .ci/run installs openvswitch-switch", err)
	}
	// Unix socket paths are limited to 108 bytes: keep the folder short.
	dir, err := os.MkdirTemp("", "ovs-")
	if err != nil {
		t.Fatal(err)
	}
	o := &OVS{DB: "unix:" + filepath.Join(dir, "db.sock"), RunDir: dir, Netns: netns, spawner: newSpawner()}
	t.Cleanup(func() {
		o.stop()
		o.spawner.close()
		if t.Failed() {
			for _, l := range []string{"ovsdb-server.log", "ovs-vswitchd.log"} {
				if b, err := os.ReadFile(filepath.Join(dir, l)); err == nil && len(b) > 0 {
					t.Logf("%s (last 4 KiB):\n%s", l, tail(b, 4096))
				}
			}
		}
		os.RemoveAll(dir)
	})
	if out, err := exec.Command("ovsdb-tool", "create", filepath.Join(dir, "conf.db"), schema).CombinedOutput(); err != nil {
		t.Fatalf("ovsdb-tool create: %v: %s", err, out)
	}
	if err := o.start("ovsdb-server", filepath.Join(dir, "conf.db"),
		"--remote=punix:"+filepath.Join(dir, "db.sock"),
		"--unixctl="+filepath.Join(dir, "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(dir, "ovsdb-server.log"),
		"-vconsole:off"); err != nil {
		t.Fatal(err)
	}
	if err := o.waitFor(func() error {
		_, err := o.vsctl("--no-wait", "init")
		return err
	}); err != nil {
		t.Fatalf("ovsdb-server did not come up: %v", err)
	}
	if err := o.startVswitchd(); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o *OVS) env() []string {
	return append(os.Environ(), "OVS_RUNDIR="+o.RunDir, "OVS_LOGDIR="+o.RunDir, "OVS_DBDIR="+o.RunDir,
		"OVS_SYSCONFDIR="+o.RunDir)
}

// start runs a daemon in the foreground (its PID is the one we stop),
// entering the namespace with nsenter, which execs in place.
func (o *OVS) start(name string, args ...string) error {
	argv := append([]string{name}, args...)
	if o.Netns != "" {
		argv = append([]string{"nsenter", "--net=" + o.Netns, "--"}, argv...)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Env = o.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := o.spawner.start(cmd); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	o.procs = append(o.procs, cmd)
	return nil
}

func (o *OVS) waitFor(f func() error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop terminates the daemons by PID, newest first, and reaps them.
func (o *OVS) stop() {
	for i := len(o.procs) - 1; i >= 0; i-- {
		c := o.procs[i]
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	o.procs = nil
}

func (o *OVS) vsctl(args ...string) (string, error) {
	cmd := exec.Command("ovs-vsctl", append([]string{"--db=" + o.DB}, args...)...)
	cmd.Env = o.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ovs-vsctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// Vsctl runs ovs-vsctl against this OVS and fails the test on error.
func (o *OVS) Vsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := o.vsctl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Ofctl runs ovs-ofctl (OpenFlow 1.3) command against bridge and fails the
// test on error.
func (o *OVS) Ofctl(t testing.TB, command, bridge string, args ...string) string {
	t.Helper()
	argv := append([]string{"-O", "OpenFlow13", command, "unix:" + filepath.Join(o.RunDir, bridge+".mgmt")}, args...)
	out, err := exec.Command("ovs-ofctl", argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-ofctl %s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// RestartVswitchd stops ovs-vswitchd and starts a new one on the same
// database, as a crash and restart would: OpenFlow flows and meters are gone.
func (o *OVS) RestartVswitchd(t testing.TB) {
	t.Helper()
	o.StopVswitchd(t)
	o.StartVswitchd(t)
}

// StopVswitchd kills ovs-vswitchd, as a crash would; ovsdb-server keeps
// running, so the database takes changes that nothing applies.
func (o *OVS) StopVswitchd(t testing.TB) {
	t.Helper()
	if len(o.procs) != 2 {
		t.Fatal("ovs-vswitchd is not running")
	}
	c := o.procs[1]
	_ = c.Process.Signal(syscall.SIGKILL)
	_ = c.Wait()
	o.procs = o.procs[:1]
}

// FreezeDB stops ovsdb-server (SIGSTOP) until the returned func or the
// test's end continues it: it keeps its socket and takes connections, but
// answers nothing, as a hung server does.
func (o *OVS) FreezeDB(t testing.TB) (thaw func()) {
	t.Helper()
	return o.freeze(t, 0, "ovsdb-server")
}

// FreezeVswitchd stops ovs-vswitchd (SIGSTOP) until the returned func or
// the test's end continues it: ovs-ofctl connects to its bridges' sockets
// and gets no answer, and ovs-vsctl changes wait for it.
func (o *OVS) FreezeVswitchd(t testing.TB) (thaw func()) {
	t.Helper()
	return o.freeze(t, 1, "ovs-vswitchd")
}

func (o *OVS) freeze(t testing.TB, i int, name string) (thaw func()) {
	t.Helper()
	if len(o.procs) <= i {
		t.Fatalf("%s is not running", name)
	}
	p := o.procs[i].Process
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	thaw = func() { once.Do(func() { _ = p.Signal(syscall.SIGCONT) }) }
	t.Cleanup(thaw)
	return thaw
}

// HideDB moves ovsdb-server's socket away until the returned func or the
// test's end puts it back: new connections fail (no such file) while
// ovsdb-server keeps running, as when it restarts. back may be called from
// any goroutine; a failed move back is an error of the test.
func (o *OVS) HideDB(t testing.TB) (back func()) {
	t.Helper()
	sock := strings.TrimPrefix(o.DB, "unix:")
	if err := os.Rename(sock, sock+".away"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	back = func() {
		once.Do(func() {
			if err := os.Rename(sock+".away", sock); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(back)
	return back
}

// StartVswitchd starts ovs-vswitchd after StopVswitchd.
func (o *OVS) StartVswitchd(t testing.TB) {
	t.Helper()
	if len(o.procs) != 1 {
		t.Fatal("ovsdb-server alone is not running")
	}
	if err := o.startVswitchd(); err != nil {
		t.Fatal(err)
	}
}

// startVswitchd starts ovs-vswitchd on the database and waits until it
// applies it: a command that waits for that answers only then.
func (o *OVS) startVswitchd() error {
	if err := o.start("ovs-vswitchd", o.DB,
		"--unixctl="+filepath.Join(o.RunDir, "ovs-vswitchd.ctl"),
		"--log-file="+filepath.Join(o.RunDir, "ovs-vswitchd.log"),
		"-vconsole:off"); err != nil {
		return err
	}
	if err := o.waitFor(func() error {
		_, err := o.vsctl("--timeout=1", "set", "Open_vSwitch", ".", "external_ids:stickynet-test="+strconv.FormatInt(time.Now().UnixNano(), 10))
		return err
	}); err != nil {
		return fmt.Errorf("ovs-vswitchd did not come up: %w", err)
	}
	return nil
}

// spawner starts processes from one OS thread that lives until close. The
// kernel sends Pdeathsig when the thread that forked a child ends, not the
// process; Go ends threads that goroutines leave locked (pkg/ns does this on
// purpose), which would kill a daemon at a random moment. Here the daemons
// die with the test process, and only then.
type spawner struct {
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq)}
	go func() {
		runtime.LockOSThread()
		for r := range s.reqs {
			r.done <- r.cmd.Start()
		}
		runtime.UnlockOSThread()
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, done: done}
	return <-done
}

func (s *spawner) close() { close(s.reqs) }

// tied is the spawner of StartTied, for the process's lifetime.
var tied = sync.OnceValue(newSpawner)

// StartTied starts cmd so that it is killed when the test process ends,
// however it ends: a helper a test starts (an iperf3 server, a kube-scheduler
// of a benchmark) outlived a test binary that panicked or timed out, no
// t.Cleanup having run, with the namespace it ran in.
func StartTied(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return tied().start(cmd)
}
