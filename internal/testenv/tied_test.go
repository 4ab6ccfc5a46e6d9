package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	RunChild(map[string]func(context.Context) error{
		// tied starts a sleep through StartTied, prints its PID, and ends
		// the process as a panic or a test timeout does, running no cleanup.
		"tied": func(context.Context) error {
			cmd := exec.Command("sleep", "300")
			if err := StartTied(cmd); err != nil {
				return err
			}
			fmt.Println(cmd.Process.Pid)
			time.Sleep(200 * time.Millisecond)
			os.Exit(2)
			return nil
		},
	})
	os.Exit(m.Run())
}

// A process StartTied started dies with the test process, however that
// ends. Before, the helpers tests started (iperf3 servers in a pod's
// netns) outlived a test binary that panicked or timed out.
func TestStartTiedDiesWithProcess(t *testing.T) {
	pid, err := strconv.Atoi(strings.TrimSpace(StartChild(t, "tied")))
	if err != nil {
		t.Fatal(err)
	}
	alive := func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		// The state follows the command's name in parentheses; a zombie is gone.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		return len(f) > 0 && f[0] != "Z"
	}
	Eventually(context.Background(), t, 10*time.Second, fmt.Sprintf("sleep %d gone with the process that started it", pid), func() (bool, string) {
		return !alive(), ""
	})
}
