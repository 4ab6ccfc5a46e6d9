package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/api"
)

// The test binary doubles as the plugin: with STICKYNET_CNI_MAIN set it runs
// main. The integration tests (fallback_test.go) run the built plugin binary
// with a real agent.
func TestMain(m *testing.M) {
	if os.Getenv("STICKYNET_CNI_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	code := m.Run()
	agenttest.Cleanup()
	os.Exit(code)
}

// stubAgent answers on a unix socket the way a node agent would and records
// what it received. Only the plugin's side of the wire is under test here;
// the real agent is exercised by nodeagent's integration tests.
type stubAgent struct {
	socket string
	got    chan api.Request
	answer func(api.Request) (int, []byte)
}

func startStub(t *testing.T, answer func(api.Request) (int, []byte)) *stubAgent {
	t.Helper()
	dir, err := os.MkdirTemp("", "sncni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &stubAgent{socket: filepath.Join(dir, "agent.sock"), got: make(chan api.Request, 10), answer: answer}
	l, err := net.Listen("unix", s.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.Request
		if r.URL.Path != api.Path || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		s.got <- req
		code, body := s.answer(req)
		w.WriteHeader(code)
		_, _ = w.Write(body)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return s
}

func jsonOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type run struct {
	stdout, stderr string
	exit           int
	elapsed        time.Duration
}

// pluginCmd is the plugin binary as a container runtime runs it.
func pluginCmd(command, conf string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append([]string{
		"STICKYNET_CNI_MAIN=1",
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=c0ffee",
		"CNI_NETNS=/var/run/netns/does-not-matter",
		"CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0",
	}, env...)
	cmd.Stdin = strings.NewReader(conf)
	return cmd
}

// runPlugin runs the plugin binary as a container runtime would.
func runPlugin(t *testing.T, command, conf string, env ...string) run {
	t.Helper()
	cmd := pluginCmd(command, conf, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := run{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.exit = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func cniError(t *testing.T, r run) *types.Error {
	t.Helper()
	if r.exit == 0 {
		t.Fatalf("plugin succeeded, want an error; stdout %q", r.stdout)
	}
	var e types.Error
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("stdout is not a CNI error: %q (%v)", r.stdout, err)
	}
	return &e
}

func conf(version, socket string, extra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"stickynet","type":"stickynet","socket":%q%s}`, version, socket, extra)
}

func TestForwardsEachCommand(t *testing.T) {
	result := []byte(`{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/x"}],"ips":[{"address":"10.20.0.5/24","interface":0}]}`)
	stub := startStub(t, func(req api.Request) (int, []byte) {
		if req.Command == api.CommandAdd {
			return 200, jsonOf(t, api.Response{Result: result})
		}
		return 200, []byte(`{}`)
	})
	for _, cmd := range []string{api.CommandAdd, api.CommandDel, api.CommandCheck, api.CommandGC, api.CommandStatus} {
		t.Run(cmd, func(t *testing.T) {
			c := conf("1.1.0", stub.socket, "")
			if cmd == api.CommandGC {
				c = conf("1.1.0", stub.socket, `,"cni.dev/valid-attachments":[]`)
			}
			r := runPlugin(t, cmd, c)
			if r.exit != 0 {
				t.Fatalf("exit %d, stdout %q stderr %q", r.exit, r.stdout, r.stderr)
			}
			req := <-stub.got
			if req.Command != cmd || string(req.Config) != c {
				t.Errorf("agent got command %q config %s", req.Command, req.Config)
			}
			if cmd != api.CommandGC && cmd != api.CommandStatus &&
				(req.ContainerID != "c0ffee" || req.IfName != "eth0" || req.Args != "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0" || req.Netns == "") {
				t.Errorf("agent got %+v", req)
			}
			if cmd == api.CommandAdd {
				var got, want any
				_ = json.Unmarshal(result, &want)
				if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("stdout = %q, want the agent's result", r.stdout)
				}
			} else if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	agentErr := types.NewError(api.ErrPodNotAdmitted, "pod ns/web-0 has no stickynet.io/assigned-ip annotation", "")
	stub := startStub(t, func(req api.Request) (int, []byte) {
		if req.Command == api.CommandCheck {
			return 500, []byte("boom")
		}
		return 200, jsonOf(t, api.Response{Error: agentErr})
	})
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	tests := []struct {
		name     string
		command  string
		conf     string
		wantCode uint
		wantMsg  string
	}{
		{name: "agent error passed through", command: "ADD", conf: conf("1.1.0", stub.socket, ""), wantCode: api.ErrPodNotAdmitted, wantMsg: "assigned-ip"},
		{name: "agent HTTP failure", command: "CHECK", conf: conf("1.1.0", stub.socket, ""), wantCode: types.ErrInternal, wantMsg: "HTTP 500"},
		{name: "no agent", command: "ADD", conf: conf("1.1.0", missing, ""), wantCode: types.ErrTryAgainLater, wantMsg: missing},
		{name: "no agent on DEL", command: "DEL", conf: conf("1.1.0", missing, ""), wantCode: types.ErrTryAgainLater, wantMsg: "try again later"},
		{name: "no agent on STATUS", command: "STATUS", conf: conf("1.1.0", missing, ""), wantCode: types.ErrPluginNotAvailable, wantMsg: missing},
		{name: "malformed config", command: "ADD", conf: `{"cniVersion":"1.1.0","name":"x","type":`, wantCode: types.ErrDecodingFailure},
		{name: "unknown CNI version", command: "ADD", conf: conf("9.9.9", stub.socket, ""), wantCode: types.ErrIncompatibleCNIVersion, wantMsg: "incompatible"},
		{name: "wrong type", command: "ADD", conf: `{"cniVersion":"1.1.0","name":"x","type":"bridge"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `"bridge"`},
		{name: "relative socket", command: "ADD", conf: conf("1.1.0", "agent.sock", ""), wantCode: types.ErrInvalidNetworkConfig, wantMsg: `"socket"`},
		{name: "bad timeout", command: "ADD", conf: conf("1.1.0", stub.socket, `,"timeout":"soon"`), wantCode: types.ErrInvalidNetworkConfig, wantMsg: `"timeout"`},
		{name: "GC needs 1.1", command: "GC", conf: conf("1.0.0", stub.socket, ""), wantCode: types.ErrIncompatibleCNIVersion},
		// Not first in its conflist: the previous plugin's interface, IPs
		// and DNS were dropped from the result the runtime saw.
		{name: "ADD after another plugin", command: "ADD", conf: conf("1.1.0", stub.socket, `,"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"127.0.0.1/8"}]}`), wantCode: types.ErrInvalidNetworkConfig, wantMsg: "must be the first plugin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runPlugin(t, tt.command, tt.conf)
			e := cniError(t, r)
			if e.Code != tt.wantCode || !strings.Contains(e.Msg+e.Details, tt.wantMsg) {
				t.Fatalf("error = %+v; want code %d mentioning %q", e, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestHangingAgentFailsFast(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	stub := startStub(t, func(api.Request) (int, []byte) {
		<-release
		return 200, []byte(`{}`)
	})
	r := runPlugin(t, "ADD", conf("1.1.0", stub.socket, `,"timeout":"300ms"`))
	e := cniError(t, r)
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "did not answer ADD") {
		t.Fatalf("error = %+v; want code 11 saying the agent did not answer", e)
	}
	if r.elapsed > 5*time.Second {
		t.Fatalf("plugin took %s with a 300ms timeout", r.elapsed)
	}
}

func TestAgentResultThatIsNotJSON(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{"result":"x"}`) })
	e := cniError(t, runPlugin(t, "ADD", conf("1.1.0", stub.socket, "")))
	if e.Code != types.ErrInternal || !strings.Contains(e.Msg, "without a valid result") {
		t.Fatalf("error = %+v", e)
	}
}

func TestVersion(t *testing.T) {
	r := runPlugin(t, "VERSION", `{"cniVersion":"1.1.0"}`)
	if r.exit != 0 {
		t.Fatalf("exit %d: %s", r.exit, r.stdout)
	}
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || !strings.Contains(strings.Join(v.Supported, ","), "1.1.0") {
		t.Fatalf("VERSION printed %q", r.stdout)
	}
}

// fallbackConf is a stickynet entry with a fallback network and its own
// cache folder.
func fallbackConf(socket, cacheDir, fallback string) string {
	return conf("1.1.0", socket, fmt.Sprintf(`,"cacheDir":%q,"fallback":%s`, cacheDir, fallback))
}

func TestNotAdmittedWithoutFallback(t *testing.T) {
	reason := "pod ns/web-0: pod has no stickynet.io/assigned-ip annotation: it was not admitted by the stickynet webhook (is its namespace labelled stickynet.io/enabled=true?)"
	stub := startStub(t, func(api.Request) (int, []byte) {
		return 200, jsonOf(t, api.Response{Fallback: &api.Fallback{Reason: reason}})
	})
	cache := t.TempDir()
	e := cniError(t, runPlugin(t, "ADD", conf("1.1.0", stub.socket, fmt.Sprintf(`,"cacheDir":%q`, cache))))
	if e.Code != api.ErrPodNotAdmitted || e.Msg != reason || !strings.Contains(e.Details, `"fallback"`) {
		t.Fatalf("error = %+v; want code %d with the agent's reason", e, api.ErrPodNotAdmitted)
	}
	if entries, _ := os.ReadDir(cache); len(entries) != 0 {
		t.Errorf("cache folder holds %v after a refused ADD", entries)
	}
}

func TestFallbackConfigErrors(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{}`) })
	cache := t.TempDir()
	tests := []struct {
		name, conf, want string
	}{
		{"fallback not a conflist", fallbackConf(stub.socket, cache, `"bridge"`), `"fallback"`},
		{"fallback without plugins", fallbackConf(stub.socket, cache, `{"cniVersion":"1.0.0","name":"pods"}`), `no "plugins"`},
		{"fallback is stickynet", fallbackConf(stub.socket, cache, `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"stickynet"}]}`), "another network than stickynet"},
		{"relative cacheDir", conf("1.1.0", stub.socket, `,"cacheDir":"cache"`), `"cacheDir" is "cache"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := cniError(t, runPlugin(t, "ADD", tt.conf))
			if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, tt.want) {
				t.Fatalf("error = %+v; want code %d saying %q", e, types.ErrInvalidNetworkConfig, tt.want)
			}
		})
	}
}

// TestFallbackPluginDiesWithPlugin: a fallback plugin still running when
// the stickynet plugin is killed dies with it. A runtime kills a plugin that
// takes longer than it waits and goes on with DEL, which a fallback ADD
// left running would race.
func TestFallbackPluginDiesWithPlugin(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) {
		return 200, jsonOf(t, api.Response{Fallback: &api.Fallback{Reason: "not stickynet's"}})
	})
	bin, cache := t.TempDir(), t.TempDir()
	pidFile := filepath.Join(bin, "pid")
	script := "#!/bin/sh\necho $$ > " + pidFile + ".tmp && mv " + pidFile + ".tmp " + pidFile + "\nexec sleep 60\n"
	if err := os.WriteFile(filepath.Join(bin, "slow"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := pluginCmd("ADD", fallbackConf(stub.socket, cache, `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"slow"}]}`), "CNI_PATH="+bin)
	if err := testenv.StartTied(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var pid int
	deadline := time.Now().Add(20 * time.Second)
	for pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
				t.Fatalf("pid file %q: %v", b, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fallback plugin did not start in 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stat := func() string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return string(b)
	}
	sleeping := func() bool { st := stat(); return strings.Contains(st, "(sleep) ") && !strings.Contains(st, ") Z ") }
	// The fallback plugin runs sleep (the shell execs it) before the
	// stickynet plugin is killed: until then its stat says (slow).
	for !sleeping() {
		if time.Now().After(deadline) {
			t.Fatalf("the fallback plugin did not exec sleep in 20 s: %q", stat())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if sleeping() {
			_ = syscall.Kill(pid, syscall.SIGKILL) // the test's own child's child
		}
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	alive := func() bool { st := stat(); return st != "" && !strings.Contains(st, ") Z ") }
	for deadline := time.Now().Add(5 * time.Second); alive(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("fallback plugin (pid %d) still running 5 s after the stickynet plugin was killed", pid)
		}
	}
}

// writeRecord puts a fallback record as the plugin writes it.
func writeRecord(t *testing.T, cache, containerID, ifName, network string) string {
	t.Helper()
	dir := filepath.Join(cache, "fallback")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, containerID+"@"+ifName+".json")
	b := fmt.Sprintf(`{"containerID":%q,"ifName":%q,"network":%s}`, containerID, ifName, network)
	if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFallbackDelWithoutAgent: DEL of a pod attached through the fallback
// network needs only the fallback network: with the agent not answering,
// it detaches the pod, removes the record and succeeds.
func TestFallbackDelWithoutAgent(t *testing.T) {
	testenv.Root(t)
	refDir := filepath.Dir(testenv.NeedTool(t, "cniplugins", "bridge"))
	cache := t.TempDir()
	const fb = `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","bridge":"sndel0"}]}`
	rec := writeRecord(t, cache, "c0ffee", "eth0", fb) // runPlugin's container
	missing := filepath.Join(t.TempDir(), "agent.sock")
	args := "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0"
	r := runPlugin(t, "DEL", fallbackConf(missing, cache, fb), "CNI_PATH="+refDir, "CNI_NETNS=", args)
	if r.exit != 0 {
		t.Errorf("DEL with the agent down: exit %d, stdout %q stderr %q", r.exit, r.stdout, r.stderr)
	}
	if _, err := os.Stat(rec); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("fallback record after DEL: %v", err)
	}
	// Any other DEL needs the agent (without "agentCacheDir": see
	// TestDelWithoutAgentNorRecord).
	e := cniError(t, runPlugin(t, "DEL", fallbackConf(missing, cache, fb), "CNI_PATH="+refDir, "CNI_NETNS=", args))
	if e.Code != types.ErrTryAgainLater {
		t.Errorf("DEL of an attachment without a record, agent down: %+v; want code %d", e, types.ErrTryAgainLater)
	}
}

// TestDelWithoutAgentNorRecord: a DEL that cannot reach the agent succeeds
// when the agent's cache folder ("agentCacheDir") is complete and holds no
// record of the attachment (the agent writes it before making anything: an
// ADD that failed for want of the agent left nothing), and fails with code
// 11 when it holds one, when the folder is not marked complete (lost,
// wiped, not mounted, or the agent still restoring), when the conflist names
// no such folder, or when the agent is there but does not answer (it may be
// working on the attachment).
func TestDelWithoutAgentNorRecord(t *testing.T) {
	agentCache := t.TempDir()
	missing := filepath.Join(t.TempDir(), "agent.sock")
	withFolder := conf("1.1.0", missing, fmt.Sprintf(`,"agentCacheDir":%q`, agentCache))
	if e := cniError(t, runPlugin(t, "DEL", withFolder)); e.Code != types.ErrTryAgainLater {
		t.Errorf("DEL with the agent down, its folder not complete: %+v; want code %d", e, types.ErrTryAgainLater)
	}
	if err := os.WriteFile(filepath.Join(agentCache, api.RecordsComplete), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runPlugin(t, "DEL", withFolder); r.exit != 0 {
		t.Errorf("DEL with the agent down and no record of it: exit %d, stdout %q; want success", r.exit, r.stdout)
	}
	if e := cniError(t, runPlugin(t, "DEL", conf("1.1.0", missing, ""))); e.Code != types.ErrTryAgainLater {
		t.Errorf("DEL with the agent down, no agentCacheDir: %+v; want code %d", e, types.ErrTryAgainLater)
	}
	// runPlugin's container c0ffee, interface eth0.
	if err := os.WriteFile(filepath.Join(agentCache, api.RecordName("c0ffee", "eth0")), []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if e := cniError(t, runPlugin(t, "DEL", withFolder)); e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "not reachable") {
		t.Errorf("DEL with the agent down and its record there: %+v; want code %d saying the agent is not reachable", e, types.ErrTryAgainLater)
	} else if strings.Contains(e.Msg+e.Details, "no such file or directory") || strings.Contains(e.Msg+e.Details, "not found") {
		// containerd (go-cni) takes a DEL error with these words, the netns
		// gone as after a reboot, for a teardown already done: it would
		// never send this DEL again.
		t.Errorf("DEL with the agent down and its record there: %q; want it without the words containerd takes for success", e.Msg+e.Details)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	stub := startStub(t, func(api.Request) (int, []byte) {
		<-release
		return 200, []byte(`{}`)
	})
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, api.RecordsComplete), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	hanging := conf("1.1.0", stub.socket, fmt.Sprintf(`,"timeout":"300ms","agentCacheDir":%q`, empty))
	if e := cniError(t, runPlugin(t, "DEL", hanging)); e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "did not answer DEL") {
		t.Errorf("DEL with the agent not answering, no record: %+v; want code %d", e, types.ErrTryAgainLater)
	}
}

// TestGCSplitsValidAttachments: the agent gets the valid attachments that
// are not fallback ones; a valid fallback attachment keeps its record.
func TestGCSplitsValidAttachments(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{}`) })
	cache := t.TempDir()
	const fb = `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}`
	rec := writeRecord(t, cache, "c-fallback", "eth0", fb)
	c := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"stickynet","type":"stickynet","socket":%q,"cacheDir":%q,"fallback":%s,`+
		`"cni.dev/valid-attachments":[{"containerID":"c-fallback","ifname":"eth0"},{"containerID":"c-sticky","ifname":"eth0"}]}`, stub.socket, cache, fb)
	r := runPlugin(t, "GC", c, "CNI_PATH="+t.TempDir())
	if r.exit != 0 {
		t.Fatalf("GC: exit %d, stdout %q stderr %q", r.exit, r.stdout, r.stderr)
	}
	req := <-stub.got
	var got struct {
		Valid    []types.GCAttachment `json:"cni.dev/valid-attachments"`
		Fallback json.RawMessage      `json:"fallback"`
	}
	if err := json.Unmarshal(req.Config, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Valid) != 1 || got.Valid[0] != (types.GCAttachment{ContainerID: "c-sticky", IfName: "eth0"}) || got.Fallback == nil {
		t.Errorf("agent got GC config %s; want the stickynet attachment only, the rest unchanged", req.Config)
	}
	if _, err := os.Stat(rec); err != nil {
		t.Errorf("record of a valid fallback attachment: %v", err)
	}
}

// TestGCValidAttachmentsKey: a GC that names no valid attachments at all
// is refused, before anything is detached (taken for an empty list, it tore
// down every pod's network on the node); one with the key of the CNI 1.1
// spec as first published, cni.dev/attachments, is read as the list, and
// the agent gets it under cni.dev/valid-attachments.
func TestGCValidAttachmentsKey(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{}`) })
	cache := t.TempDir()
	const fb = `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}`
	rec := writeRecord(t, cache, "c-fallback", "eth0", fb)
	gc := func(key string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"stickynet","type":"stickynet","socket":%q,"cacheDir":%q,"fallback":%s%s}`, stub.socket, cache, fb, key)
	}
	e := cniError(t, runPlugin(t, "GC", gc(""), "CNI_PATH="+t.TempDir()))
	if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "GC without cni.dev/valid-attachments") {
		t.Errorf("GC without a list: %+v; want code %d naming cni.dev/valid-attachments", e, types.ErrInvalidNetworkConfig)
	}
	select {
	case req := <-stub.got:
		t.Errorf("the agent got %s from a GC without a list", req.Command)
	default:
	}
	if _, err := os.Stat(rec); err != nil {
		t.Errorf("record of a fallback attachment after a GC without a list: %v", err)
	}
	r := runPlugin(t, "GC", gc(`,"cni.dev/attachments":[{"containerID":"c-fallback","ifname":"eth0"},{"containerID":"c-sticky","ifname":"eth0"}]`), "CNI_PATH="+t.TempDir())
	if r.exit != 0 {
		t.Fatalf("GC with cni.dev/attachments: exit %d, stdout %q stderr %q", r.exit, r.stdout, r.stderr)
	}
	var got struct {
		Valid []types.GCAttachment `json:"cni.dev/valid-attachments"`
	}
	if err := json.Unmarshal((<-stub.got).Config, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Valid) != 1 || got.Valid[0] != (types.GCAttachment{ContainerID: "c-sticky", IfName: "eth0"}) {
		t.Errorf("agent got valid attachments %+v; want c-sticky's only", got.Valid)
	}
	if _, err := os.Stat(rec); err != nil {
		t.Errorf("record of a fallback attachment cni.dev/attachments names: %v", err)
	}
}

// TestStaleFallbackRecordThatCannotBeDeleted: GC reports the failed DEL of
// a stale fallback attachment and keeps its record for the next GC, and
// still forwards GC to the agent.
func TestStaleFallbackRecordThatCannotBeDeleted(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{}`) })
	cache := t.TempDir()
	const fb = `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"no-such-plugin"}]}`
	rec := writeRecord(t, cache, "c-stale", "eth0", fb)
	gc := conf("1.1.0", stub.socket, fmt.Sprintf(`,"cacheDir":%q,"fallback":%s,"cni.dev/valid-attachments":[]`, cache, fb))
	e := cniError(t, runPlugin(t, "GC", gc, "CNI_PATH="+t.TempDir()))
	if !strings.Contains(e.Msg, `fallback network "pods"`) || !strings.Contains(e.Msg, "c-stale") || !strings.Contains(e.Msg, "no-such-plugin") {
		t.Errorf("error = %+v; want one naming the network, the container and the plugin", e)
	}
	if _, err := os.Stat(rec); err != nil {
		t.Errorf("record of the stale attachment whose DEL failed: %v", err)
	}
	if req := <-stub.got; req.Command != api.CommandGC {
		t.Errorf("agent got %s", req.Command)
	}
}

func TestDamagedRecord(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{}`) })
	cache := t.TempDir()
	p := writeRecord(t, cache, "c0ffee", "eth0", `{}`)
	if err := os.WriteFile(p, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := cniError(t, runPlugin(t, "DEL", conf("1.1.0", stub.socket, fmt.Sprintf(`,"cacheDir":%q`, cache))))
	if e.Code != types.ErrIOFailure || !strings.Contains(e.Msg, p) {
		t.Fatalf("error = %+v; want code %d naming %s", e, types.ErrIOFailure, p)
	}
}

// TestStatusInAgentRestart: STATUS without the agent (nothing on its
// socket, or the agent starting) passes within api.StatusGrace of the last
// STATUS the agent passed, as a restart's, so that the node stays Ready; it
// fails as unavailable without that record, once the grace is over (saying
// when the agent last passed), and with a record from the future (a clock
// stepped back). Before, every agent restart failed it.
func TestStatusInAgentRestart(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "agent.sock")
	starting := startStub(t, func(api.Request) (int, []byte) {
		return 200, jsonOf(t, api.Response{Error: types.NewError(types.ErrTryAgainLater, "stickynet node agent is starting", "")})
	})
	ovsDown := startStub(t, func(api.Request) (int, []byte) {
		return 200, jsonOf(t, api.Response{Error: types.NewError(types.ErrPluginNotAvailable, "ovs-vswitchd does not answer", "")})
	})
	status := func(socket string) run {
		return runPlugin(t, "STATUS", conf("1.1.0", socket, ""))
	}
	unavailable := func(what string, r run, want ...string) {
		t.Helper()
		e := cniError(t, r)
		if e.Code != types.ErrPluginNotAvailable {
			t.Errorf("%s: %+v; want code %d", what, e, types.ErrPluginNotAvailable)
		}
		for _, w := range want {
			if !strings.Contains(e.Msg, w) {
				t.Errorf("%s: %q; want it to say %q", what, e.Msg, w)
			}
		}
	}
	unavailable("no agent, its status never passed", status(missing), missing)
	// The record is beside each socket.
	passedAt := func(at time.Time) {
		t.Helper()
		for _, socket := range []string{missing, starting.socket, ovsDown.socket} {
			marker := filepath.Join(filepath.Dir(socket), api.StatusPassed)
			if err := os.WriteFile(marker, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(marker, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	passedAt(time.Now())
	for _, socket := range []string{missing, starting.socket} {
		if r := status(socket); r.exit != 0 {
			t.Errorf("STATUS with the agent at %s away, its status passed a moment ago: exit %d, stdout %q", socket, r.exit, r.stdout)
		}
	}
	unavailable("OVS down, the agent's status passed a moment ago", status(ovsDown.socket), "ovs-vswitchd does not answer")
	passedAt(time.Now().Add(-api.StatusGrace - time.Minute))
	unavailable("no agent, its status passed 2m ago", status(missing), missing, "the agent's status last passed 2m0s ago")
	unavailable("agent starting, its status passed 2m ago", status(starting.socket), "stickynet node agent is starting", "last passed")
	passedAt(time.Now().Add(time.Hour)) // the clock stepped back since
	unavailable("no agent, its status passed an hour from now", status(missing), missing)
}

func TestStatusOfFallback(t *testing.T) {
	stub := startStub(t, func(api.Request) (int, []byte) { return 200, []byte(`{}`) })
	cache := t.TempDir()
	const fb = `{"cniVersion":"1.1.0","name":"pods","plugins":[{"type":"no-such-plugin"}]}`
	e := cniError(t, runPlugin(t, "STATUS", fallbackConf(stub.socket, cache, fb), "CNI_PATH="+t.TempDir()))
	if e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, `fallback network "pods"`) {
		t.Fatalf("error = %+v; want code %d naming the fallback network", e, types.ErrPluginNotAvailable)
	}
	if req := <-stub.got; req.Command != api.CommandStatus {
		t.Errorf("agent got %s before the fallback", req.Command)
	}
}
