// Package certs provides the webhook's serving certificate. In "self" mode a
// CA and serving certificate are kept in a Secret, rotated well before expiry
// and the CA injected into the MutatingWebhookConfiguration's caBundle
// (open-policy-agent/cert-controller's rotator, as Gatekeeper uses it). In
// "cert-manager" mode cert-manager issues the certificate into the mounted
// folder and its CA injector fills the caBundle; stickynet only waits for the files.
package certs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/types"
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
}

// Setup adds what provides the certificate to mgr and returns a channel that
// is closed once the certificate files are in CertDir.
func Setup(mgr manager.Manager, o Options) (<-chan struct{}, error) {
	switch o.Mode {
	case ModeSelf:
		if len(o.DNSNames) == 0 || o.Secret.Namespace == "" || o.Secret.Name == "" || o.WebhookConfig == "" {
			return nil, fmt.Errorf("certificate mode %s needs DNS names, a secret namespace/name and the webhook configuration name", ModeSelf)
		}
		ready := make(chan struct{})
		err := rotator.AddRotator(mgr, &rotator.CertRotator{
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
		})
		if err != nil {
			return nil, fmt.Errorf("add certificate rotator: %w", err)
		}
		return ready, nil
	case ModeCertManager:
		ready := make(chan struct{})
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			return waitFiles(ctx, o.CertDir, ready)
		})); err != nil {
			return nil, err
		}
		return ready, nil
	}
	return nil, fmt.Errorf("certificate mode %q: expected %s or %s", o.Mode, ModeSelf, ModeCertManager)
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
