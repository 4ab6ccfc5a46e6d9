// Package server serves the node agent's unix socket: the CNI endpoint the
// stickynet plugin posts to (api.Path) and a health endpoint. The socket is
// created with mode 0600; a stale socket file is replaced, a live one (another
// agent answering) is an error.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/nodeagent/api"
)

// handler answers forwarded CNI requests.
type handler interface {
	Handle(ctx context.Context, req api.Request) api.Response
}

// Server listens on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
}

// Listen creates the socket at path (its folder too) for h.
func Listen(ctx context.Context, path string, h handler) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket folder for %s: %w", path, err)
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: another process answers there (a second node agent?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, err
	}
	log := klog.FromContext(ctx)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.Path, func(w http.ResponseWriter, r *http.Request) {
		var req api.Request
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		var resp api.Response
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			resp.Error = types.NewError(types.ErrDecodingFailure, fmt.Sprintf("request does not decode: %v", err), "")
		} else {
			began := time.Now()
			resp = h.Handle(klog.NewContext(r.Context(), log), req)
			observe(req.Command, resp, time.Since(began))
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(resp); err != nil {
			log.V(2).Info("Answer not delivered", "command", req.Command, "err", err)
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	return &Server{
		path: path,
		ln:   ln,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		},
	}, nil
}

// Serve answers until ctx ends, then lets requests in progress finish (up to
// grace) and removes the socket.
func (s *Server) Serve(ctx context.Context, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		os.Remove(s.path)
		return fmt.Errorf("serve %s: %w", s.path, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	os.Remove(s.path)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shut down %s: %w", s.path, err)
	}
	return nil
}

// listenPrivate creates the socket in a fresh folder only root can enter,
// sets mode 0600, and only then moves it to path: at no time can another user
// connect.
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".agent-sock-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod 0600 %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("move socket to %s: %w", path, err)
	}
	return ln, nil
}
