package etcd

import "testing"

// TestTarget: Diagnose reads each endpoint form as etcd's client does (its
// internal/endpoint): what it dials, the name the certificate must carry and
// when it uses TLS; a scheme only a gRPC resolver dials is left alone.
func TestTarget(t *testing.T) {
	for _, c := range []struct {
		ep, network, addr, name string
		creds                   credentials
		ok                      bool
	}{
		{"10.0.0.4:2379", "tcp", "10.0.0.4:2379", "10.0.0.4", tlsIfConfigured, true},
		{"etcd.example:2379", "tcp", "etcd.example:2379", "etcd.example", tlsIfConfigured, true},
		{"http://etcd:2379", "tcp", "etcd:2379", "etcd", tlsNever, true},
		{"HTTP://etcd:2379", "tcp", "etcd:2379", "etcd", tlsNever, true},
		{"https://etcd.example:2379", "tcp", "etcd.example:2379", "etcd.example", tlsAlways, true},
		{"https://[::1]:2379", "tcp", "[::1]:2379", "::1", tlsAlways, true},
		{"[fd00::4]:2379", "tcp", "[fd00::4]:2379", "fd00::4", tlsIfConfigured, true},
		{"unix:///run/etcd/etcd.sock", "unix", "/run/etcd/etcd.sock", "etcd.sock", tlsIfConfigured, true},
		{"unix://etcd.sock", "unix", "etcd.sock", "etcd.sock", tlsIfConfigured, true},
		{"unix:etcd.sock", "unix", "etcd.sock", "etcd.sock", tlsIfConfigured, true},
		{"unixs:///run/etcd/etcd.sock", "unix", "/run/etcd/etcd.sock", "etcd.sock", tlsAlways, true},
		{"dns:///etcd.example:2379", "", "", "", 0, false},
	} {
		network, addr, name, creds, ok := target(c.ep)
		if network != c.network || addr != c.addr || name != c.name || creds != c.creds || ok != c.ok {
			t.Errorf("target(%q) = %q %q %q %v %v; want %q %q %q %v %v", c.ep, network, addr, name, creds, ok, c.network, c.addr, c.name, c.creds, c.ok)
		}
	}
}
