package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
)

// ensureSecret makes the Secret when missing, keeps a serving certificate
// that carries every DNS name and drops (with its key, keeping the CA) one
// that lacks a name, which the rotator, checking only the first name,
// would otherwise keep until it expires.
func TestEnsureSecret(t *testing.T) {
	_, c := apiServer(t)
	ctx := context.Background()
	key := types.NamespacedName{Namespace: "default", Name: "webhook-cert"}
	names := []string{"stickynet-webhook.stickynet-system.svc"}
	if err := ensureSecret(c, key, names, nil); err != nil {
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
	if err := ensureSecret(c, key, names, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, key, sec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sec.Data["tls.crt"], kp.CertPEM) {
		t.Fatal("a certificate carrying every DNS name was dropped")
	}

	more := append(names, names[0]+".cluster.local")
	if err := ensureSecret(c, key, more, nil); err != nil {
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

// A Secret deleted by hand (to force a new certificate) is made again by the
// running replicas, and the rotator fills it and injects its CA into the
// webhook configuration. It stayed gone: the rotator fills only a Secret
// that exists, and in the chart no new replica could mount it.
func TestDeletedSecretMadeAgain(t *testing.T) {
	cfg, c := apiServer(t)
	ctx := context.Background()
	createWebhookConfig(t, c)
	key := types.NamespacedName{Namespace: "default", Name: "stickynet-webhook-cert"}
	dir := t.TempDir()
	startCerts(t, cfg, Options{Mode: ModeSelf, CertDir: dir, Secret: key, DNSNames: []string{"localhost"}, WebhookConfig: "stickynet", WriteFiles: true})
	filled := func() (ca []byte, ok bool) {
		sec := &corev1.Secret{}
		if err := c.Get(ctx, key, sec); err != nil {
			return nil, false
		}
		return sec.Data["ca.crt"], len(sec.Data["ca.crt"]) > 0 && len(sec.Data["tls.crt"]) > 0 && len(sec.Data["tls.key"]) > 0
	}
	first, ok := filled()
	if !ok {
		t.Fatal("the Secret was not filled")
	}
	// Made at start (it did not exist), it is owned by the configuration
	// as one made again is (below).
	if sec, mwc := (&corev1.Secret{}), (&admissionregistrationv1.MutatingWebhookConfiguration{}); c.Get(ctx, key, sec) != nil || c.Get(ctx, client.ObjectKey{Name: "stickynet"}, mwc) != nil ||
		len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].UID != mwc.UID {
		t.Errorf("owners of the Secret made at start: %+v; want the webhook configuration (uid %s)", sec.OwnerReferences, mwc.UID)
	}
	if err := c.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ca, ok := filled()
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		injected := ok && c.Get(ctx, client.ObjectKey{Name: "stickynet"}, mwc) == nil && bytes.Equal(mwc.Webhooks[0].ClientConfig.CABundle, ca)
		if ok && !bytes.Equal(ca, first) && injected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the Secret was deleted: filled %v, a new CA %v, caBundle injected %v", ok, ok && !bytes.Equal(ca, first), injected)
		}
	}
	// The certificate the webhook serves (the chart's replicas copy it as
	// here) follows the new CA within seconds of its injection: until then
	// the API server refuses the replica.
	ca, _ := filled()
	injected := time.Now()
	for !signedBy(t, filepath.Join(dir, "tls.crt"), ca) {
		if time.Since(injected) > 5*time.Second {
			t.Fatal("5 s after the new CA's injection, the certificate files are not signed by it")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("certificate files signed by the new CA %s after its injection", time.Since(injected).Round(10*time.Millisecond))
	// Owned by the webhook configuration, so that the garbage collector
	// removes one made during an uninstall; once the configuration is gone,
	// it is not made again.
	sec, mwc := &corev1.Secret{}, &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := c.Get(ctx, key, sec); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "stickynet"}, mwc); err != nil {
		t.Fatal(err)
	}
	if o := sec.OwnerReferences; len(o) != 1 || o[0].Kind != "MutatingWebhookConfiguration" || o[0].UID != mwc.UID {
		t.Errorf("owners of the Secret made again: %+v; want the webhook configuration (uid %s)", o, mwc.UID)
	}
	for _, o := range []client.Object{mwc, sec} {
		if err := c.Delete(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(10 * secretCheckEvery)
	if err := c.Get(ctx, key, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("the Secret after the webhook configuration was deleted: %v; want it not made again", err)
	}
}

// createWebhookConfig creates the MutatingWebhookConfiguration stickynet,
// whose caBundle a self-mode replica keeps.
func createWebhookConfig(t *testing.T, c client.Client) {
	t.Helper()
	url, none := "https://localhost:9443/mutate-pods", admissionregistrationv1.SideEffectClassNone
	if err := c.Create(context.Background(), &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "stickynet"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "pods.stickynet.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			SideEffects: &none, AdmissionReviewVersions: []string{"v1"},
		}},
	}); err != nil {
		t.Fatal(err)
	}
}

// apiServer starts a real API server for the test: its config, and a
// client of it.
func apiServer(t *testing.T) (*rest.Config, client.Client) {
	t.Helper()
	apisrv := agenttest.StartAPIServer(t)
	c, err := client.New(apisrv.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return apisrv.Config, c
}

// startCerts runs what Setup adds for o on a manager of cfg until the test
// ends, the Secret checked every 200 ms, and waits for the first
// certificate.
func startCerts(t *testing.T, cfg *rest.Config, o Options) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	secretCheckEvery = 200 * time.Millisecond
	t.Cleanup(func() { secretCheckEvery = 10 * time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	ready, err := Setup(ctx, mgr, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("no certificate within 60 s")
	}
}

// signedBy reports whether the PEM certificate in file verifies against the
// PEM CA.
func signedBy(t *testing.T, file string, caPEM []byte) bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	cert := parseCert(b)
	if cert == nil {
		return false
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("the Secret's ca.crt holds no certificate")
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost"})
	return err == nil
}

// A serving certificate that lacks one of the replica's DNS names, issued
// under the same CA after the replica started (by a replica of the previous
// release, during a rollout that adds a name: its rotator checks only the
// first name), is dropped, and the rotator issues one with every name. It
// stood until its renewal, months later.
func TestCertificateLackingANameReissued(t *testing.T) {
	cfg, c := apiServer(t)
	ctx := context.Background()
	key := types.NamespacedName{Namespace: "default", Name: "names-cert"} // a controller name of its own (the rotator's is the Secret's)
	names := []string{"localhost", "stickynet-webhook.default.svc"}
	startCerts(t, cfg, Options{Mode: ModeSelf, CertDir: t.TempDir(), Secret: key, DNSNames: names, WebhookConfig: "stickynet", WriteFiles: true})
	sec := &corev1.Secret{}
	if err := c.Get(ctx, key, sec); err != nil {
		t.Fatal(err)
	}
	pki, err := testenv.LoadPKI(t.TempDir(), sec.Data["ca.crt"], sec.Data["ca.key"])
	if err != nil {
		t.Fatal(err)
	}
	old, err := pki.Issue("old", testenv.CertSpec{CN: names[0], DNS: names[:1], Server: true})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data["tls.crt"], sec.Data["tls.key"] = old.CertPEM, old.KeyPEM
	if err := c.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := c.Get(ctx, key, sec); err != nil {
			t.Fatal(err)
		}
		missing := missingNames(sec.Data["tls.crt"], names)
		if len(sec.Data["tls.crt"]) > 0 && len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after a certificate without %s was written, the Secret's lacks %v", names[1], missing)
		}
	}
	if !bytes.Equal(sec.Data["ca.crt"], pki.CAPEM) {
		t.Error("the CA changed; the caBundle would have had to follow")
	}
}

// The readiness check fails, naming the flag, while the webhook
// configuration does not exist, and passes once it does.
func TestReadyOnlyWithWebhookConfiguration(t *testing.T) {
	_, c := apiServer(t)
	check := configExists(c, "stickynet")
	req := httptest.NewRequest(http.MethodGet, "/readyz", nil)
	if err := check(req); err == nil || !strings.Contains(err.Error(), `MutatingWebhookConfiguration "stickynet" (--webhook-config-name) does not exist`) {
		t.Errorf("without the configuration: %v; want it named, with the flag", err)
	}
	createWebhookConfig(t, c)
	if err := check(req); err != nil {
		t.Errorf("with the configuration: %v; want ready", err)
	}
	// An API server that does not answer fails no replica: the check gives
	// up within the chart's probe timeout (1 s) and passes.
	start := time.Now()
	if err := configExists(hung{}, "stickynet")(req); err != nil || time.Since(start) > time.Second {
		t.Errorf("with the API server not answering: %v after %s; want ready within 1 s", err, time.Since(start).Round(time.Millisecond))
	}
}

// hung is an API server that answers NotFound after 3 s, unless the
// caller gives up first.
type hung struct{ client.Reader }

func (hung) Get(ctx context.Context, key client.ObjectKey, _ client.Object, _ ...client.GetOption) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(3 * time.Second):
		return apierrors.NewNotFound(admissionregistrationv1.Resource("mutatingwebhookconfigurations"), key.Name)
	}
}

// In cert-manager mode the webhook copies cert-manager's Secret into its
// folder, and a new certificate (here: a new CA's, as after the user's
// issuer rotated) within seconds: cainjector puts the new CA in the caBundle
// at once, and a mounted Secret followed only at the kubelet's refresh,
// about a minute in which every admission was refused. Before, this mode
// served a mounted Secret only.
func TestCertManagerSecretFollowed(t *testing.T) {
	cfg, c := apiServer(t)
	ctx := context.Background()
	key := types.NamespacedName{Namespace: "default", Name: "stickynet-webhook-cert"}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
		Data:       map[string][]byte{"tls.crt": []byte("crt-1"), "tls.key": []byte("key-1"), "ca.crt": []byte("ca-1")},
	}
	if err := c.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	startCerts(t, cfg, Options{Mode: ModeCertManager, CertDir: dir, Secret: key, WriteFiles: true})
	has := func(crt, key string) bool {
		c, errC := os.ReadFile(filepath.Join(dir, "tls.crt"))
		k, errK := os.ReadFile(filepath.Join(dir, "tls.key"))
		return errC == nil && errK == nil && string(c) == crt && string(k) == key
	}
	if !has("crt-1", "key-1") {
		t.Fatal("ready without cert-manager's certificate in the folder")
	}
	sec.Data = map[string][]byte{"tls.crt": []byte("crt-2"), "tls.key": []byte("key-2"), "ca.crt": []byte("ca-2")}
	if err := c.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !has("crt-2", "key-2"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("5 s after cert-manager renewed the certificate, the folder still has the old one")
		}
	}
}

// A certificate that cannot be copied into the folder (a Secret mounted
// there read-only, with --cert-write-files on, its default) is logged and
// tried again each second; before, the copier returned its error, which
// stopped the webhook.
func TestSyncFilesOutlivesWriteErrors(t *testing.T) {
	key := types.NamespacedName{Namespace: "default", Name: "cert"}
	c := fake.NewClientBuilder().WithObjects(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
		Data:       map[string][]byte{"tls.crt": []byte("crt"), "tls.key": []byte("key")},
	}).Build()
	dir := t.TempDir()
	blocker := filepath.Join(dir, "tls.key.tmp") // a folder where the key's temporary file goes
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- syncFiles(ctx, c, key, dir) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("syncFiles: %v", err)
		}
	}()
	select {
	case err := <-done:
		done <- err
		t.Fatalf("syncFiles returned on a write error: %v; want it to keep trying", err)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if b, err := os.ReadFile(filepath.Join(dir, "tls.crt")); err == nil && string(b) == "crt" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("5 s after the folder could be written, no tls.crt in it")
		}
	}
}
