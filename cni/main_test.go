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
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/stickynet/stickynet/nodeagent/api"
)

// The test binary doubles as the plugin: with STICKYNET_CNI_MAIN set it runs main.
func TestMain(m *testing.M) {
	if os.Getenv("STICKYNET_CNI_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
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

// runPlugin runs the plugin binary as a container runtime would.
func runPlugin(t *testing.T, command, conf string, env ...string) run {
	t.Helper()
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
