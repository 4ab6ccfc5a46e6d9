package etcd_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/testenv"
)

// The driver reaches an etcd that serves only TLS and requires client
// certificates, as production etcd clusters do; without a client
// certificate it is refused. Where the client's error says only that the
// deadline passed, Diagnose names the cause.
func TestTLS(t *testing.T) {
	testenv.Integration(t)
	pki, err := testenv.NewPKI(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	server, err := pki.Issue("etcd", testenv.CertSpec{CN: "etcd", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	client, err := pki.Issue("stickynet", testenv.CertSpec{CN: "stickynet", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	e := testenv.StartEtcdTLS(t, testenv.EtcdTLS{CAFile: pki.CAFile, CertFile: server.CertFile, KeyFile: server.KeyFile})
	if !strings.HasPrefix(e.Endpoint, "https://") {
		t.Fatalf("endpoint %s", e.Endpoint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	s := dial(t, etcd.Options{Endpoints: []string{e.Endpoint}, CAFile: pki.CAFile, CertFile: client.CertFile, KeyFile: client.KeyFile})
	if _, err := s.Txn(ctx, nil, []store.Op{store.Put("/tls/a", []byte("v"), store.NoLease)}, nil); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	if kv, err := s.Get(ctx, "/tls/a"); err != nil || kv == nil || string(kv.Value) != "v" {
		t.Fatalf("get over TLS: %v, %v", kv, err)
	}

	anon := dial(t, etcd.Options{Endpoints: []string{e.Endpoint}, CAFile: pki.CAFile})
	actx, acancel := context.WithTimeout(ctx, 3*time.Second)
	defer acancel()
	if _, err := anon.Get(actx, "/tls/a"); err == nil {
		t.Fatal("etcd answered a client without a certificate")
	}
	// The client's error ends in the deadline; Diagnose says why. Under
	// TLS 1.3 etcd's refusal comes after the handshake, and Diagnose waits
	// 200 ms for it: an etcd starved for longer on a busy machine is not
	// heard, so a silent answer is asked again.
	testenv.Eventually(ctx, t, 20*time.Second, "Diagnose without a client certificate naming the endpoint and that etcd requires a certificate", func() (bool, string) {
		err := anon.Diagnose(ctx)
		return err != nil && strings.Contains(err.Error(), "certificate required") && strings.Contains(err.Error(), e.Endpoint), fmt.Sprint(err)
	})
	if err := s.Diagnose(ctx); err != nil {
		t.Errorf("Diagnose with the client certificate: %v; want nil", err)
	}

	if _, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}, CertFile: client.CertFile}); err == nil || !strings.Contains(err.Error(), "give both or neither") {
		t.Fatalf("certificate without key: %v", err)
	}

	// TLS on the server's side only: the CA alone reaches it (the chart's
	// etcd.tlsClientCert: false); without the CA the server is not trusted.
	open := testenv.StartEtcdTLS(t, testenv.EtcdTLS{CAFile: pki.CAFile, CertFile: server.CertFile, KeyFile: server.KeyFile, AnyClient: true})
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute) // a budget of its own for the second etcd
	defer cancel()
	caOnly := dial(t, etcd.Options{Endpoints: []string{open.Endpoint}, CAFile: pki.CAFile})
	if _, err := caOnly.Txn(ctx, nil, []store.Op{store.Put("/tls/b", []byte("v"), store.NoLease)}, nil); err != nil {
		t.Fatalf("put with the CA only, to an etcd without client-cert-auth: %v", err)
	}
	untrusting := dial(t, etcd.Options{Endpoints: []string{open.Endpoint}})
	uctx, ucancel := context.WithTimeout(ctx, 3*time.Second)
	defer ucancel()
	if _, err := untrusting.Get(uctx, "/tls/b"); err == nil {
		t.Fatal("a client without the CA trusted etcd's certificate")
	}
	if err := untrusting.Diagnose(ctx); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("Diagnose without the CA: %v; want etcd's certificate not trusted", err)
	}
	if err := caOnly.Diagnose(ctx); err != nil {
		t.Errorf("Diagnose with the CA, to an etcd without client-cert-auth: %v; want nil", err)
	}
	// Nothing listening, and an endpoint that takes connections after one
	// that does not.
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	down := fmt.Sprintf("127.0.0.1:%d", port)
	if err := dial(t, etcd.Options{Endpoints: []string{down}}).Diagnose(ctx); err == nil || !strings.Contains(err.Error(), down+": dial tcp "+down+": connect: connection refused") {
		t.Errorf("Diagnose of %s with nothing listening: %v; want connection refused", down, err)
	}
	if err := dial(t, etcd.Options{Endpoints: []string{down, open.Endpoint}, CAFile: pki.CAFile}).Diagnose(ctx); err != nil {
		t.Errorf("Diagnose with one endpoint down and one up: %v; want nil", err)
	}
	// An endpoint that takes the TCP connection and then says nothing (a
	// hung member) does not use up the time of the others.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	hung := "https://" + silent.Addr().String()
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	if err := dial(t, etcd.Options{Endpoints: []string{hung, open.Endpoint}, CAFile: pki.CAFile}).Diagnose(dctx); err != nil {
		t.Errorf("Diagnose with a hung endpoint first and one up: %v; want nil", err)
	}
}

// With auth enabled, the driver's username and password are what lets it in.
func TestAuth(t *testing.T) {
	e := testenv.StartEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := dial(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	cli := admin.Client()
	if _, err := cli.UserAdd(ctx, "root", "secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	s := dial(t, etcd.Options{Endpoints: []string{e.Endpoint}, Username: "root", Password: "secret"})
	if _, err := s.Txn(ctx, nil, []store.Op{store.Put("/auth/a", []byte("v"), store.NoLease)}, nil); err != nil {
		t.Fatalf("put with username and password: %v", err)
	}
	anon := dial(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	if _, err := anon.Get(ctx, "/auth/a"); err == nil {
		t.Fatal("etcd with auth enabled answered a client without credentials")
	}
}

// dial connects the driver and closes it when the test ends.
func dial(t *testing.T, opts etcd.Options) *etcd.Store {
	t.Helper()
	s, err := etcd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
