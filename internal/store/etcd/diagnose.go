package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Diagnose says why etcd does not answer, which the client's errors do not:
// while gRPC waits for a connection, a request ends in its caller's
// deadline, whatever the connection failed on. It connects to each endpoint
// as the client does (TCP or a Unix socket, then the TLS handshake with the
// client's configuration, certificate included) and returns nil when one
// takes the connection (etcd is there; it answers slowly or has no leader),
// else each endpoint's failure.
func (s *Store) Diagnose(ctx context.Context) error { return s.dialer.diagnose(ctx) }

// dialer connects as the client does, for Diagnose.
type dialer struct {
	endpoints []string
	tls       *tls.Config
	timeout   time.Duration
}

func (d dialer) diagnose(ctx context.Context) error {
	var failed []string
	for _, ep := range d.endpoints {
		err := d.try(ctx, ep)
		if err == nil {
			return nil
		}
		failed = append(failed, fmt.Sprintf("%s: %v", ep, err))
	}
	return fmt.Errorf("no etcd endpoint takes a connection: %s", strings.Join(failed, "; "))
}

// try connects to ep and, with TLS, completes the handshake and waits a
// moment for the server to refuse the client's certificate, which TLS 1.3
// tells only after the client's side of the handshake is done.
func (d dialer) try(ctx context.Context, ep string) error {
	// As the client picks credentials: http:// and unix:// never use TLS,
	// https:// and unixs:// always (with the system's roots when the
	// client has no TLS configuration), a bare host:port when configured.
	network, addr, tlsCfg := "tcp", ep, d.tls
	if scheme, rest, ok := strings.Cut(ep, "://"); ok {
		addr, _, _ = strings.Cut(rest, "/")
		if scheme == "unix" || scheme == "unixs" {
			network, addr = "unix", rest
		}
		switch {
		case scheme == "http" || scheme == "unix":
			tlsCfg = nil
		case tlsCfg == nil:
			tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	cfg := tlsCfg.Clone()
	if cfg != nil && cfg.ServerName == "" && network == "tcp" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	if cfg == nil || cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		return nil // no TLS, or a name to check that this dialer cannot know (unixs://)
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	_ = tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := tc.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}
