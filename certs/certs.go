// Package certs provides the webhook's serving certificate. In "self" mode a
// CA and serving certificate are kept in a Secret, rotated well before expiry
// and the CA injected into the MutatingWebhookConfiguration's caBundle
// (open-policy-agent/cert-controller's rotator, as Gatekeeper uses it). In
// "cert-manager" mode cert-manager issues the certificate into the mounted
// folder and its CA injector fills the caBundle; stickynet only waits for the files.
package certs

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Modes of Options.Mode.
const (
	ModeSelf        = "self"
	ModeCertManager = "cert-manager"
)

// Options configure the serving certificate.
type Options struct {
	// Mode is ModeSelf or ModeCertManager.
	Mode string
	// CertDir is where the webhook server reads tls.crt and tls.key.
	CertDir string
	// Secret holds the CA and certificate (self mode).
	Secret types.NamespacedName
	// DNSNames the certificate is valid for; the first is its common name,
	// such as stickynet-webhook.stickynet-system.svc.
	DNSNames []string
	// WebhookConfig is the MutatingWebhookConfiguration whose caBundle is kept current (self mode).
	WebhookConfig string
	// ServerCertDuration and Lookahead: a certificate lives ServerCertDuration
	// and is replaced Lookahead before it expires (defaults 1 year and 90 days).
	ServerCertDuration, Lookahead time.Duration
	// WriteFiles copies the Secret's certificate (the rotator's, or
	// cert-manager's) into CertDir, and again on each change: a new CA is
	// served within about a second, where a mounted Secret follows it only
	// at the kubelet's refresh (the chart copies, in both modes).
	WriteFiles bool
}

// Setup adds what provides the certificate to mgr and returns a channel that
// is closed once the certificate files are in CertDir. stopping ends when the
// webhook begins to shut down (before mgr's context does).
func Setup(stopping context.Context, mgr manager.Manager, o Options) (<-chan struct{}, error) {
	switch o.Mode {
	case ModeSelf:
		if len(o.DNSNames) == 0 || o.Secret.Namespace == "" || o.Secret.Name == "" || o.WebhookConfig == "" {
			return nil, fmt.Errorf("certificate mode %s needs DNS names, a secret namespace/name and the webhook configuration name", ModeSelf)
		}
		c, err := client.New(mgr.GetConfig(), client.Options{})
		if err != nil {
			return nil, fmt.Errorf("client for the certificate secret: %w", err)
		}
		if err := ensureSecret(c, o.Secret, o.DNSNames, configOwner(c, o.WebhookConfig)); err != nil {
			return nil, err
		}
		ready := make(chan struct{})
		err = rotator.AddRotator(mgr, &rotator.CertRotator{
			SecretKey:          o.Secret,
			CertDir:            o.CertDir,
			CAName:             "stickynet-ca",
			CAOrganization:     "stickynet",
			DNSName:            o.DNSNames[0],
			ExtraDNSNames:      o.DNSNames[1:],
			IsReady:            ready,
			Webhooks:           []rotator.WebhookInfo{{Name: o.WebhookConfig, Type: rotator.Mutating}},
			ServerCertDuration: o.ServerCertDuration,
			LookaheadInterval:  o.Lookahead,
			ControllerName:     "cert-rotator-" + o.Secret.Name,
		})
		if err != nil {
			return nil, fmt.Errorf("add certificate rotator: %w", err)
		}
		// A Secret deleted by hand (to force a new certificate) is made
		// again: the rotator only fills a Secret that exists, and pods that
		// start meanwhile mount it optional, with no certificate until then.
		// Not once the webhook is shutting down (stopping ends).
		if err := mgr.Add(everyReplica(func(ctx context.Context) error {
			ctx, cancel := context.WithCancel(ctx)
			defer context.AfterFunc(stopping, cancel)()
			return keepSecret(ctx, c, o.Secret, o.DNSNames, o.WebhookConfig)
		})); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("webhook-configuration", configExists(c, o.WebhookConfig)); err != nil {
			return nil, err
		}
		if o.WriteFiles {
			if err := mgr.Add(everyReplica(func(ctx context.Context) error {
				return syncFiles(ctx, mgr.GetAPIReader(), o.Secret, o.CertDir)
			})); err != nil {
				return nil, err
			}
		}
		return ready, nil
	case ModeCertManager:
		ready := make(chan struct{})
		if o.WriteFiles {
			// cert-manager's Secret copied as in self mode: a serving
			// certificate under a new CA (the user's issuer rotated), which
			// cainjector puts in the caBundle at once, is served within
			// seconds, not at the kubelet's refresh of a mounted Secret.
			if o.Secret.Namespace == "" || o.Secret.Name == "" {
				return nil, fmt.Errorf("certificate mode %s with files written needs the secret namespace/name", ModeCertManager)
			}
			if err := mgr.Add(everyReplica(func(ctx context.Context) error {
				return syncFiles(ctx, mgr.GetAPIReader(), o.Secret, o.CertDir)
			})); err != nil {
				return nil, err
			}
		}
		if err := mgr.Add(everyReplica(func(ctx context.Context) error {
			return waitFiles(ctx, o.CertDir, ready)
		})); err != nil {
			return nil, err
		}
		return ready, nil
	}
	return nil, fmt.Errorf("certificate mode %q: expected %s or %s", o.Mode, ModeSelf, ModeCertManager)
}

// everyReplica is a runnable that runs on every replica, leader or not.
type everyReplica func(ctx context.Context) error

func (f everyReplica) Start(ctx context.Context) error { return f(ctx) }

func (f everyReplica) NeedLeaderElection() bool { return false }

// ensureSecret creates the (empty) Secret the rotator fills, when missing,
// and drops a serving certificate that lacks one of dnsNames (the rotator
// checks the first only), so that the rotator issues a new one under the
// same CA: the caBundle stays.
func ensureSecret(c client.Client, key types.NamespacedName, dnsNames []string, owner *metav1.OwnerReference) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if owner != nil {
		sec.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	err := c.Create(ctx, sec)
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create certificate secret %s: %w", key, err)
	}
	_, err = dropLacking(ctx, c, key, dnsNames)
	return client.IgnoreNotFound(err)
}

// dropLacking drops the Secret's serving certificate and key when the
// certificate lacks one of dnsNames, and returns the names it lacked (only
// those, with an error, when the drop failed). It makes no Secret: one
// gone (an uninstall) is an error IsNotFound tells.
func dropLacking(ctx context.Context, c client.Client, key types.NamespacedName, dnsNames []string) ([]string, error) {
	sec := &corev1.Secret{}
	if err := c.Get(ctx, key, sec); err != nil {
		return nil, fmt.Errorf("read certificate secret %s: %w", key, err)
	}
	missing := missingNames(sec.Data["tls.crt"], dnsNames)
	if len(missing) == 0 {
		return nil, nil
	}
	delete(sec.Data, "tls.crt")
	delete(sec.Data, "tls.key")
	// A conflict: another replica changed the Secret first (this same
	// change, or the rotator's); either way the rotator sees it, and the
	// next check looks again.
	if err := c.Update(ctx, sec); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return missing, fmt.Errorf("drop the serving certificate of %s, which lacks %v: %w", key, missing, err)
	}
	return missing, nil
}

// secretCheckEvery is how often each replica checks the Secret.
var secretCheckEvery = 10 * time.Second

// keepSecret makes the Secret again whenever it is gone, until ctx ends. The
// rotator then fills it with a new CA and certificate and injects the CA.
// The Secret made again is owned by the webhook configuration, and only
// made while that exists: an uninstall deletes the Secret, then the
// configuration (Helm's order), while replicas may still run, and the
// garbage collector removes a Secret one of them made meanwhile.
//
// It also drops, again and again, a serving certificate that lacks one of
// dnsNames (as ensureSecret does at start): during a rollout that adds a
// name, a replica of the previous release, whose rotator checks only the
// first name, may issue the next certificate without it, which would then
// stand until its renewal, months later. Replicas of both releases
// (same CA, so the caBundle stays) issue in turn until the old ones are gone.
func keepSecret(ctx context.Context, c client.Client, key types.NamespacedName, dnsNames []string, webhookConfig string) error {
	log := klog.FromContext(ctx).WithValues("secret", key)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(secretCheckEvery):
		}
		missing, err := dropLacking(ctx, c, key, dnsNames)
		switch {
		case err == nil && len(missing) > 0:
			log.Info("Serving certificate lacked DNS names (issued by a replica of another release?); dropped it, for one with them under the same CA", "missing", missing)
		case len(missing) > 0:
			log.Error(err, "Serving certificate lacks DNS names and could not be dropped")
		}
		if !apierrors.IsNotFound(err) {
			continue // there, or the API server did not answer: the next check
		}
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := c.Get(ctx, client.ObjectKey{Name: webhookConfig}, mwc); err != nil {
			if apierrors.IsNotFound(err) {
				log.V(1).Info("Certificate Secret is gone, and so is the webhook configuration (uninstalled?): not made again", "webhookConfiguration", webhookConfig)
			} else {
				log.Error(err, "Certificate Secret is gone; could not read the webhook configuration that would own it again", "webhookConfiguration", webhookConfig)
			}
			continue
		}
		if err := ensureSecret(c, key, dnsNames, ownedBy(mwc)); err != nil {
			log.Error(err, "Certificate Secret is gone and could not be made again")
			continue
		}
		log.Info("Certificate Secret was gone; made it again, for a new CA and certificate")
	}
}

func ownedBy(mwc *admissionregistrationv1.MutatingWebhookConfiguration) *metav1.OwnerReference {
	return &metav1.OwnerReference{APIVersion: admissionregistrationv1.SchemeGroupVersion.String(), Kind: "MutatingWebhookConfiguration", Name: mwc.Name, UID: mwc.UID}
}

// configOwner is the owner of a Secret made at start: the webhook
// configuration, as for one made again (keepSecret), so that the garbage
// collector removes it with the configuration; nil when that cannot be read
// (not made yet, as outside the chart): the replica starts all the same.
func configOwner(c client.Reader, name string) *metav1.OwnerReference {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, mwc); err != nil {
		return nil
	}
	return ownedBy(mwc)
}

// configExists is a readiness check that fails while the webhook
// configuration is missing: the API server does not call the webhook then
// (pods are admitted without addresses) and the rotator has no caBundle to
// keep, which it only logs. A wrong --webhook-config-name made every replica
// Ready all the same. Other errors, a slow answer among them (500 ms, within
// the chart's probe timeout), pass: a replica's readiness is not the API
// server's, and every replica would fail together.
func configExists(c client.Reader, name string) func(*http.Request) error {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), 500*time.Millisecond)
		defer cancel()
		err := c.Get(ctx, client.ObjectKey{Name: name}, &admissionregistrationv1.MutatingWebhookConfiguration{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("MutatingWebhookConfiguration %q (--webhook-config-name) does not exist: the API server does not call this webhook, and its caBundle cannot be kept", name)
		}
		return nil
	}
}

// missingNames returns the names the PEM certificate does not carry; none
// for no certificate (the rotator makes one).
func missingNames(certPEM []byte, names []string) []string {
	cert := parseCert(certPEM)
	if cert == nil {
		return nil
	}
	var missing []string
	for _, n := range names {
		if !slices.Contains(cert.DNSNames, n) {
			missing = append(missing, n)
		}
	}
	return missing
}

// parseCert returns the first certificate of PEM data; nil for none.
func parseCert(certPEM []byte) *x509.Certificate {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil
	}
	return cert
}

// syncFiles writes the Secret's tls.crt and tls.key into dir whenever they
// change, as kubelet does for a mounted Secret, until ctx ends.
func syncFiles(ctx context.Context, r client.Reader, key types.NamespacedName, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create certificate folder: %w", err)
	}
	log := klog.FromContext(ctx).WithValues("secret", key, "dir", dir)
	// report logs each new error once, not every second.
	report := func(last *string, err error, msg string) {
		if err != nil && err.Error() != *last {
			log.Error(err, msg)
		}
		*last = ""
		if err != nil {
			*last = err.Error()
		}
	}
	var last, readErr, writeErr string
	for {
		sec := &corev1.Secret{}
		err := r.Get(ctx, key, sec)
		report(&readErr, err, "Could not read the certificate Secret; serving the certificate last copied")
		if crt, k := sec.Data["tls.crt"], sec.Data["tls.key"]; err == nil && len(crt) > 0 && len(k) > 0 && string(crt)+string(k) != last {
			err := writeAtomic(filepath.Join(dir, "tls.key"), k)
			if err == nil {
				err = writeAtomic(filepath.Join(dir, "tls.crt"), crt)
			}
			if err == nil {
				last = string(crt) + string(k)
			}
			// A Secret mounted read-only there, say: the files it has are
			// served. Tried again each second.
			report(&writeErr, err, "Could not copy the certificate into the folder (a Secret mounted there? then --cert-write-files=false)")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// waitFiles closes ready once tls.crt and tls.key exist (cert-manager writes them
// into the mounted Secret), then returns.
func waitFiles(ctx context.Context, dir string, ready chan struct{}) error {
	for {
		_, errC := os.Stat(filepath.Join(dir, "tls.crt"))
		_, errK := os.Stat(filepath.Join(dir, "tls.key"))
		if errC == nil && errK == nil {
			close(ready)
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}
