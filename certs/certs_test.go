package certs

import (
	"bytes"
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
)

// ensureSecret makes the Secret when missing, keeps a serving certificate
// that carries every DNS name and drops (with its key, keeping the CA) one
// that lacks a name, which the rotator, checking only the first name,
// would otherwise keep until it expires.
func TestEnsureSecret(t *testing.T) {
	apisrv := agenttest.StartAPIServer(t)
	c, err := client.New(apisrv.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	key := types.NamespacedName{Namespace: "default", Name: "webhook-cert"}
	names := []string{"stickynet-webhook.stickynet-system.svc"}
	if err := ensureSecret(c, key, names); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{}
	if err := c.Get(ctx, key, sec); err != nil {
		t.Fatalf("Secret not made: %v", err)
	}

	pki, err := testenv.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.Issue("serving", testenv.CertSpec{CN: names[0], DNS: names, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data = map[string][]byte{"ca.crt": pki.CAPEM, "tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM}
	if err := c.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	if err := ensureSecret(c, key, names); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, key, sec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sec.Data["tls.crt"], kp.CertPEM) {
		t.Fatal("a certificate carrying every DNS name was dropped")
	}

	more := append(names, names[0]+".cluster.local")
	if err := ensureSecret(c, key, more); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, key, sec); err != nil {
		t.Fatal(err)
	}
	if _, ok := sec.Data["tls.crt"]; ok {
		t.Errorf("a certificate without %s was kept", more[1])
	}
	if _, ok := sec.Data["tls.key"]; ok {
		t.Error("the dropped certificate's key was kept")
	}
	if !bytes.Equal(sec.Data["ca.crt"], pki.CAPEM) {
		t.Error("the CA was dropped with the certificate; the caBundle would change")
	}
}
