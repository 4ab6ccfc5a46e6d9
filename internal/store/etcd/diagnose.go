package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"time"
)

// Diagnose says why etcd does not answer, which the client's errors do not:
// while gRPC waits for a connection, a request ends in its caller's
// deadline, whatever the connection failed on. It connects to every
// endpoint at once as the client does (TCP or a Unix socket, then the TLS
// handshake with the client's configuration, certificate included) and
// returns nil as soon as one takes the connection (etcd is there; it
// answers slowly or has no leader), else each endpoint's failure. An
// endpoint it cannot dial itself (a gRPC resolver's, such as dns:///)
// counts as taking it: it cannot tell.
func (s *Store) Diagnose(ctx context.Context) error { return s.dialer.diagnose(ctx) }

// dialer connects as the client does, for Diagnose.
type dialer struct {
	endpoints []string
	tls       *tls.Config
	timeout   time.Duration
}

func (d dialer) diagnose(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel() // the others give up once one connects
	errs := make([]error, len(d.endpoints))
	done := make(chan int, len(d.endpoints))
	for i, ep := range d.endpoints {
		go func() {
			errs[i] = d.try(ctx, ep)
			done <- i
		}()
	}
	for range d.endpoints {
		if i := <-done; errs[i] == nil {
			return nil
		}
	}
	failed := make([]string, len(d.endpoints))
	for i, ep := range d.endpoints {
		failed[i] = fmt.Sprintf("%s: %v", ep, errs[i])
	}
	return fmt.Errorf("no etcd endpoint takes a connection: %s", strings.Join(failed, "; "))
}

// credentials say whether the client uses TLS on an endpoint.
type credentials int

const (
	tlsIfConfigured credentials = iota // a bare host:port, unix://
	tlsAlways                          // https://, unixs://: the system's roots when none is configured
	tlsNever                           // http://
)

// target reads an endpoint the way etcd's client does: the network and
// address to dial, the name its certificate must carry, and its TLS rule.
// ok is false for an endpoint only gRPC can dial (another scheme).
func target(ep string) (network, addr, serverName string, creds credentials, ok bool) {
	for _, scheme := range []string{"unixs", "unix"} {
		rest, found := strings.CutPrefix(ep, scheme+":")
		if !found {
			continue
		}
		// unix:///abs/path, unix://rel/path and unix:rel/path.
		if p, abs := strings.CutPrefix(rest, "//"); abs {
			rest = p
		}
		creds = tlsIfConfigured
		if scheme == "unixs" {
			creds = tlsAlways
		}
		return "unix", rest, path.Base(rest), creds, true
	}
	if !strings.Contains(ep, "://") {
		host, _, err := net.SplitHostPort(ep)
		if err != nil {
			host = ep
		}
		return "tcp", ep, host, tlsIfConfigured, true
	}
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return "", "", "", 0, false
	}
	creds = tlsNever
	if u.Scheme == "https" {
		creds = tlsAlways
	}
	return "tcp", u.Host, u.Hostname(), creds, true
}

// try connects to ep and, with TLS, completes the handshake and waits a
// moment for the server to refuse the client's certificate, which TLS 1.3
// tells only after the client's side of the handshake is done.
func (d dialer) try(ctx context.Context, ep string) error {
	network, addr, serverName, creds, ok := target(ep)
	if !ok {
		return nil
	}
	var cfg *tls.Config
	switch {
	case creds == tlsNever:
	case d.tls != nil:
		cfg = d.tls.Clone()
	case creds == tlsAlways:
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if cfg == nil {
		return nil
	}
	if cfg.ServerName == "" {
		cfg.ServerName = serverName
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
