// Package chart_test checks the Helm chart charts/stickynet: helm lint, that
// every stickynet container's arguments are flags its binary accepts, that
// the MutatingWebhookConfiguration matches the one the Go code builds, that
// the API server of the local cluster accepts every rendered object
// (server-side dry run) and that an upgrade keeps the extender's CA, and how
// values are checked and turned into objects.
package chart_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	klabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
	configv1 "k8s.io/kube-scheduler/config/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/extender/server"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/webhook/app"
)

const chartDir = "../../charts/stickynet"

// helm runs helm and returns its output; it fails the test if helm fails.
func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	out, stderr, err := testenv.Helm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// render renders the chart as release sn in stickynet-system with each of
// sets given to --set, and splits the result with objects.
func render(t *testing.T, sets ...string) map[string][]byte {
	t.Helper()
	return objects(t, helm(t, append([]string{"template", "sn", chartDir, "--namespace", "stickynet-system"}, setArgs(sets)...)...))
}

// setArgs is helm's --set for each of sets.
func setArgs(sets []string) []string {
	var args []string
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return args
}

// objects splits a rendered manifest into documents, keyed by kind/name.
func objects(t *testing.T, manifest []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	r := utilyaml.NewYAMLReader(bufioReader(manifest))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind != "" {
			out[meta.Kind+"/"+meta.Metadata.Name] = doc
		}
	}
}

// The extender's container listens on 8888 whatever extender.bindPort
// says, which sets the Service's port and the scheduler's URL: the
// container runs without privileges, and a bindPort below 1024 made it
// crash-loop where the runtime does not open low ports to such containers
// (containerd before 2.0; read, not tried: the local cluster's containerd
// 2.4 does open them).
func TestExtenderBindPort(t *testing.T) {
	testenv.Integration(t)
	objs := render(t, "extender.bindPort=443")
	for obj, wants := range map[string][]string{
		"Deployment/stickynet-extender": {"-bind-address=:8888", "containerPort: 8888"},
		"Service/stickynet-extender":    {"port: 443"},
	} {
		for _, want := range wants {
			if !strings.Contains(string(objs[obj]), want) {
				t.Errorf("%s with extender.bindPort=443 lacks %q:\n%s", obj, want, objs[obj])
			}
		}
	}
	found := false
	for name, doc := range objs {
		if strings.HasPrefix(name, "ConfigMap/") && strings.Contains(string(doc), "urlPrefix: https://stickynet-extender.stickynet-system.svc:443") {
			found = true
		}
	}
	if !found {
		t.Error("no scheduler configuration with the extender's URL on port 443")
	}
}

// The webhook's readiness probe takes a replica out of the Service within
// about 4 s of /readyz failing (etcd not answering it for 10 s); with the
// kubelet's defaults it took 20-30 s more, and about one admission in N
// waited out the store timeout there.
func TestWebhookReadinessProbe(t *testing.T) {
	testenv.Integration(t)
	var dep struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Name           string `json:"name"`
						ReadinessProbe struct {
							PeriodSeconds    int `json:"periodSeconds"`
							FailureThreshold int `json:"failureThreshold"`
						} `json:"readinessProbe"`
					} `json:"containers"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(render(t)["Deployment/stickynet-webhook"], &dep); err != nil {
		t.Fatal(err)
	}
	if len(dep.Spec.Template.Spec.Containers) == 0 {
		t.Fatal("the chart renders no Deployment/stickynet-webhook with containers")
	}
	for _, c := range dep.Spec.Template.Spec.Containers {
		period, fails := c.ReadinessProbe.PeriodSeconds, c.ReadinessProbe.FailureThreshold
		if period == 0 {
			period = 10 // the kubelet's default
		}
		if fails == 0 {
			fails = 3
		}
		if period*fails > 5 {
			t.Errorf("container %s: readiness probe every %d s, %d failures; want at most 5 s in all", c.Name, period, fails)
		}
	}
}

func TestLintAndTemplate(t *testing.T) {
	testenv.Integration(t)
	helm(t, "lint", "--strict", chartDir)
	helm(t, "lint", "--strict", chartDir, "--set", "webhook.certMode=cert-manager", "--set", "etcd.bundled.enabled=false", "--set", "etcd.endpoints={https://etcd.example:2379}")
	objs := objects(t, helm(t, "template", "sn", chartDir, "--namespace", "stickynet-system"))
	for _, want := range []string{
		"Deployment/stickynet-webhook", "MutatingWebhookConfiguration/stickynet", "StatefulSet/stickynet-etcd",
		"Deployment/stickynet-extender", "Deployment/stickynet-scheduler", "DaemonSet/stickynet-nodeagent",
	} {
		if _, ok := objs[want]; !ok {
			t.Errorf("rendered chart lacks %s", want)
		}
	}
	cm := render(t, "webhook.certMode=cert-manager")
	// The serving certificate comes from a CA Issuer of the chart's own CA,
	// not from a self-signed Issuer (it would be its own CA: each renewal
	// would change the caBundle under the replicas still serving the old one).
	var serving, ca struct {
		Spec struct {
			IsCA        bool              `json:"isCA"`
			SecretName  string            `json:"secretName"`
			IssuerRef   map[string]string `json:"issuerRef"`
			Duration    string            `json:"duration"`
			RenewBefore string            `json:"renewBefore"`
		} `json:"spec"`
	}
	var caIssuer struct {
		Spec struct {
			CA struct {
				SecretName string `json:"secretName"`
			} `json:"ca"`
		} `json:"spec"`
	}
	for key, into := range map[string]any{"Certificate/stickynet-webhook": &serving, "Certificate/stickynet-webhook-ca": &ca, "Issuer/stickynet-ca": &caIssuer} {
		if err := yaml.Unmarshal(cm[key], into); err != nil || cm[key] == nil {
			t.Fatalf("cert-manager mode: %s: %v (rendered: %t)", key, err, cm[key] != nil)
		}
	}
	if serving.Spec.IssuerRef["name"] != "stickynet-ca" || !ca.Spec.IsCA || ca.Spec.IssuerRef["name"] != "stickynet-selfsigned" ||
		caIssuer.Spec.CA.SecretName != ca.Spec.SecretName {
		t.Errorf("cert-manager mode: serving issuer %v, CA isCA %t issuer %v secret %q, CA Issuer secret %q; want serving from stickynet-ca, a CA from stickynet-selfsigned in the CA Issuer's secret",
			serving.Spec.IssuerRef, ca.Spec.IsCA, ca.Spec.IssuerRef, ca.Spec.SecretName, caIssuer.Spec.CA.SecretName)
	}
	// cert-manager reissues no serving certificate when its CA is renewed:
	// the caBundle (the serving Secret's ca.crt) keeps the old CA until the
	// serving certificate's next renewal, which must come before the old CA
	// expires. With a 60-day renewal (cert-manager's defaults) and the CA
	// renewed 30 days early, one renewal in two came after it: every
	// admission refused ("certificate has expired") for up to 30 days.
	hours := func(what, d string) time.Duration {
		v, err := time.ParseDuration(d)
		if err != nil {
			t.Fatalf("cert-manager mode: %s %q: %v", what, d, err)
		}
		return v
	}
	renewEvery := hours("serving duration", serving.Spec.Duration) - hours("serving renewBefore", serving.Spec.RenewBefore)
	if caEarly := hours("CA renewBefore", ca.Spec.RenewBefore); renewEvery+7*24*time.Hour > caEarly {
		t.Errorf("cert-manager mode: the serving certificate is renewed every %s, the CA %s before it expires; want the serving renewal at least a week shorter, so that one lands between the CA's renewal and the old CA's expiry", renewEvery, caEarly)
	}
	own := render(t, "webhook.certMode=cert-manager", "webhook.certManager.issuerRef.name=corp-ca", "webhook.certManager.issuerRef.kind=ClusterIssuer")
	if _, ok := own["Issuer/stickynet-ca"]; ok || own["Certificate/stickynet-webhook"] == nil || !strings.Contains(string(own["Certificate/stickynet-webhook"]), "corp-ca") {
		t.Errorf("with an issuerRef of your own the chart still makes its CA, or the serving Certificate does not name corp-ca:\n%s", own["Certificate/stickynet-webhook"])
	}
	// In both modes each replica copies its certificate from the Secret (the
	// rotator's, or cert-manager's) into an emptyDir, so that a new CA is
	// served within seconds of its injection into the caBundle (a mounted
	// Secret follows after about a minute of refused admissions), and may
	// read that Secret. Before, cert-manager's Secret was mounted.
	for mode, rendered := range map[string]map[string][]byte{"self": objs, "cert-manager": cm} {
		spec := podTemplate(t, rendered["Deployment/stickynet-webhook"]).Spec
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "certs" })
		if i < 0 {
			t.Fatalf("%s mode: the webhook has no certs volume", mode)
		}
		writes := slices.Contains(spec.Containers[0].Args, "--cert-write-files")
		if v := spec.Volumes[i]; v.EmptyDir == nil || !writes {
			t.Errorf("%s mode: certs volume %+v, --cert-write-files %t; want an emptyDir the webhook writes", mode, v.VolumeSource, writes)
		}
		role := &rbacv1.Role{}
		if err := yaml.Unmarshal(rendered["Role/stickynet-webhook"], role); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.Resources, "secrets") && slices.Contains(r.Verbs, "get") &&
				(len(r.ResourceNames) == 0 || slices.Contains(r.ResourceNames, "stickynet-webhook-cert"))
		}) {
			t.Errorf("%s mode: the webhook's Role %+v cannot get its certificate's Secret", mode, role.Rules)
		}
	}
	checkFallback(t, objs["DaemonSet/stickynet-nodeagent"], "auto")
	checkFallback(t, render(t, "nodeAgent.fallbackConflist=")["DaemonSet/stickynet-nodeagent"], "")
	// null (a key left empty in a values file) is refused, not taken for
	// none: that left every pod stickynet does not serve without a network.
	refused(t, []string{"nodeAgent.fallbackConflist=null"}, "nodeAgent.fallbackConflist: no value (null)", `or "" for none`)
	helm(t, "lint", "--strict", chartDir, "--set", fallbackValue)
	fb := objects(t, helm(t, "template", "sn", chartDir, "--namespace", "stickynet-system", "--set", fallbackValue))
	checkFallback(t, fb["DaemonSet/stickynet-nodeagent"], "/etc/cni/fallback/pods.conflist")
}

// fallbackValue sets the node agent's fallback network.
const fallbackValue = "nodeAgent.fallbackConflist=/etc/cni/fallback/pods.conflist"

// checkFallback: with nodeAgent.fallbackConflist a host file, the node
// agent gets --fallback-conflist and that file's folder, read-only (a file's
// own bind mount keeps the old file when it is replaced by a rename); with
// "auto" or "" it gets that flag (the binary's default is auto) and no
// file.
func checkFallback(t *testing.T, doc []byte, value string) {
	t.Helper()
	ds := &appsv1.DaemonSet{}
	if err := yaml.Unmarshal(doc, ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	var flag string
	hasFlag := false
	for _, a := range spec.Containers[0].Args {
		if strings.HasPrefix(a, "--fallback-conflist=") {
			flag, hasFlag = strings.TrimPrefix(a, "--fallback-conflist="), true
		}
	}
	var mount *corev1.VolumeMount
	for i, m := range spec.Containers[0].VolumeMounts {
		if m.Name == "fallback-conflist" {
			mount = &spec.Containers[0].VolumeMounts[i]
		}
	}
	var src string
	for _, v := range spec.Volumes {
		if v.Name == "fallback-conflist" && v.HostPath != nil {
			src = v.HostPath.Path
		}
	}
	if value == "" || value == "auto" {
		if !hasFlag || flag != value || mount != nil || src != "" {
			t.Errorf("with nodeAgent.fallbackConflist=%q the node agent has --fallback-conflist=%q (given: %t), mount %v, host file %q; want the flag as the value and no file", value, flag, hasFlag, mount, src)
		}
		return
	}
	if flag == "" || mount == nil || mount.MountPath != filepath.Dir(flag) || filepath.Base(flag) != filepath.Base(value) || !mount.ReadOnly || src != filepath.Dir(value) {
		t.Errorf("with nodeAgent.fallbackConflist=%s the node agent has --fallback-conflist=%q, mount %+v, host folder %q; want the host file's folder mounted read-only where the flag points", value, flag, mount, src)
	}
}

// TestWebhookConfigurationMatchesCode: the chart's MutatingWebhookConfiguration
// and the one webhook/app builds (used by the local cluster) agree on
// everything but how the API server reaches the webhook.
func TestWebhookConfigurationMatchesCode(t *testing.T) {
	testenv.Integration(t)
	objs := objects(t, helm(t, "template", "sn", chartDir, "--namespace", "stickynet-system"))
	got := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := yaml.Unmarshal(objs["MutatingWebhookConfiguration/stickynet"], got); err != nil {
		t.Fatal(err)
	}
	want := app.WebhookConfiguration("stickynet", "stickynet-system", got.Webhooks[0].ClientConfig)
	got.Labels, got.TypeMeta = nil, want.TypeMeta
	if !equality.Semantic.DeepEqual(got.Webhooks, want.Webhooks) {
		a, _ := yaml.Marshal(got.Webhooks)
		b, _ := yaml.Marshal(want.Webhooks)
		t.Fatalf("chart webhook:\n%s\ncode webhook:\n%s", a, b)
	}
}

// TestContainerArgsAreFlags runs each stickynet binary with the arguments the
// chart gives it and -h: the flag package exits 0 only if every argument
// before -h is a known flag with a valid value.
func TestContainerArgsAreFlags(t *testing.T) {
	testenv.Integration(t)
	// A large number from a values file is a float64 to the templates
	// (1e+06 unless the chart makes it an integer).
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte("extender:\n  maxRankedNodes: 1000000\n  logVerbosity: 3\nwebhook:\n  logVerbosity: 2\nnodeAgent:\n  logVerbosity: 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// With every optional flag the chart can give (the fallback network, TLS
	// to an etcd of one's own, log verbosity).
	objs := objects(t, helm(t, "template", "sn", chartDir, "--namespace", "stickynet-system", "-f", values, "--set", fallbackValue,
		"--set", "etcd.endpoints={https://etcd.example:2379}", "--set", "etcd.tlsSecret=etcd-client", "--set", "etcd.authSecret=etcd-auth"))
	bins := t.TempDir()
	build := exec.Command("go", "build", "-o", bins+"/", "../../webhook", "../../extender", "../../nodeagent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	names := map[string]string{"webhook": "stickynet-webhook", "extender": "stickynet-extender", "nodeagent": "stickynet-nodeagent"}
	var containers []corev1.Container
	var agents []string // namespace/name of the DaemonSets that run the node agent
	for key, doc := range objs {
		switch {
		case strings.HasPrefix(key, "Deployment/"):
			d := &appsv1.Deployment{}
			if err := yaml.Unmarshal(doc, d); err != nil {
				t.Fatal(err)
			}
			containers = append(containers, d.Spec.Template.Spec.Containers...)
		case strings.HasPrefix(key, "DaemonSet/"):
			d := &appsv1.DaemonSet{}
			if err := yaml.Unmarshal(doc, d); err != nil {
				t.Fatal(err)
			}
			containers = append(containers, d.Spec.Template.Spec.Containers...)
			for _, c := range d.Spec.Template.Spec.Containers {
				if len(c.Command) > 0 && filepath.Base(c.Command[0]) == "stickynet-nodeagent" {
					agents = append(agents, d.Namespace+"/"+d.Name)
				}
			}
		}
	}
	checked := 0
	for _, c := range containers {
		if len(c.Command) == 0 || !strings.HasPrefix(c.Command[0], "/usr/local/bin/stickynet-") {
			continue
		}
		base := filepath.Base(c.Command[0])
		var bin string
		for dir, name := range names {
			if name == base {
				bin = filepath.Join(bins, dir)
			}
		}
		if bin == "" {
			t.Fatalf("container %s runs %s, which is not built here", c.Name, base)
		}
		if base == "stickynet-extender" && !slices.Contains(c.Args, "-max-ranked-nodes=1000000") {
			t.Errorf("extender with maxRankedNodes: 1000000 in a values file: args %v", c.Args)
		}
		if v := map[string]string{"stickynet-webhook": "--v=2", "stickynet-extender": "-v=3", "stickynet-nodeagent": "--v=4"}[base]; !slices.Contains(c.Args, v) {
			t.Errorf("%s with its logVerbosity in a values file: args %v; want %s", base, c.Args, v)
		}
		if base == "stickynet-webhook" {
			args := strings.Join(c.Args, " ")
			mounted := false
			for _, m := range c.VolumeMounts {
				mounted = mounted || m.Name == "etcd-tls" && m.MountPath == "/etc/stickynet/etcd-tls"
			}
			if !strings.Contains(args, "--etcd-ca-file=/etc/stickynet/etcd-tls/ca.crt") || !strings.Contains(args, "--etcd-key-file=/etc/stickynet/etcd-tls/tls.key") || !mounted || len(c.Env) != 2 {
				t.Errorf("webhook with etcd.tlsSecret and etcd.authSecret: args %s, mounts %v, env %v", args, c.VolumeMounts, c.Env)
			}
			// The allocations command's socket, where it asks by default, on
			// a volume of its own (the root filesystem is read-only).
			socketDir := false
			for _, m := range c.VolumeMounts {
				socketDir = socketDir || m.MountPath == filepath.Dir(app.DefaultAllocationsSocket) && !m.ReadOnly
			}
			// The DaemonSet whose stale resources the webhook's leader
			// withdraws is the one the chart runs the agents with.
			if len(agents) != 1 || !slices.Contains(c.Args, "--node-agent-daemonset="+agents[0]) {
				t.Errorf("webhook: args %s; want --node-agent-daemonset naming the node agents' DaemonSet %v", args, agents)
			}
			if !slices.Contains(c.Args, "--allocations-socket="+app.DefaultAllocationsSocket) || !socketDir {
				t.Errorf("webhook: args %s, mounts %v; want --allocations-socket=%s on a writable mount", args, c.VolumeMounts, app.DefaultAllocationsSocket)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bin, append(append([]string{}, c.Args...), "-h")...)
		cmd.Env = []string{"NODE_NAME=test"}
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s %s: %v\n%s", base, strings.Join(c.Args, " "), err, lastLines(out, 5))
		}
		checked++
	}
	if checked != 3 {
		t.Fatalf("checked %d stickynet containers; want 3 (webhook, extender, node agent)", checked)
	}
}

// waitRefused tries (a dry run, or a call the API server refuses) until it
// is refused with a message containing want, or 30 s pass: a binding and a
// policy reach the API server's authorizer and admission a moment after
// they are applied, and until then a call may pass or be refused by RBAC.
// The caller's own checks then tell whether they arrived.
func waitRefused(try func() error, want string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err := try(); apierrors.IsForbidden(err) && strings.Contains(err.Error(), want) {
			return
		}
	}
}

// TestAPIServer renders the chart against a real API server: every object
// must pass a server-side dry run, and an upgrade (lookup finding what the
// install left) keeps the extender's CA and certificate.
func TestAPIServer(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 1})
	if err := c.InstallCRDs(ctx, chartDir+"/crds"); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateNamespace(ctx, "stickynet-system", nil); err != nil {
		t.Fatal(err)
	}
	// upgradeArgs renders the chart as helm upgrade does, with sets: lookup
	// asks the API server.
	upgradeArgs := func(sets ...string) []string {
		return append([]string{"template", "sn", chartDir, "--namespace", "stickynet-system", "--dry-run=server", "--kubeconfig", c.KubeconfigPath()}, setArgs(sets)...)
	}
	t.Run("DryRun", func(t *testing.T) {
		manifest := helm(t, "template", "sn", chartDir, "--namespace", "stickynet-system")
		f := filepath.Join(t.TempDir(), "chart.yaml")
		if err := os.WriteFile(f, manifest, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := c.Kubectl(ctx, "apply", "--dry-run=server", "-f", f)
		if err != nil {
			t.Fatalf("server-side dry run: %v\n%s", err, out)
		}
		if n := strings.Count(string(out), "(server dry run)"); n < 20 {
			t.Fatalf("only %d objects accepted:\n%s", n, out)
		}
	})

	// The CRDs' OpenAPI and CEL rules, as the real API server applies them:
	// valid objects pass, each invalid one is refused with its rule's message.
	t.Run("CRDValidation", func(t *testing.T) {
		pool := func(spec string) string {
			return "apiVersion: stickynet.io/v1alpha1\nkind: IPPool\nmetadata: {name: v}\nspec: " + spec
		}
		policy := func(spec string) string {
			return "apiVersion: stickynet.io/v1alpha1\nkind: BandwidthPolicy\nmetadata: {name: v, namespace: stickynet-system}\nspec: " + spec
		}
		apply := func(t *testing.T, manifest string) (string, error) {
			f := filepath.Join(t.TempDir(), "obj.yaml")
			if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := c.Kubectl(ctx, "apply", "--dry-run=server", "-f", f)
			return string(out), err
		}
		for _, ok := range []string{
			pool("{cidr: 10.20.0.0/16, gateway: 10.20.0.1, ranges: [{start: 10.20.1.1, end: 10.20.1.9}], exclude: [10.20.0.5, 10.20.2.0/24]}"),
			pool("{cidr: 10.20.0.0/16, macPrefix: '02'}"),
			pool("{cidr: 10.20.0.0/16, macPrefix: '02:42:ac'}"),
			pool("{cidr: 10.20.0.0/16, macPrefix: '0A:00:27'}"),
			pool("{cidr: 10.20.0.0/16, macPrefix: '00:50:56:aa:bb'}"),
			policy("{podSelector: {}, ingress: {rate: 10M, burst: 40M}, egress: {rate: 10M, burst: 100M}}"),
			policy("{podSelector: {}, ingress: {rate: 2832}}"),
			policy("{podSelector: {}, egress: {rate: 1T, burst: '34359738360'}}"),
		} {
			if out, err := apply(t, ok); err != nil {
				t.Errorf("refused:\n%s\n%v\n%s", ok, err, out)
			}
		}
		for manifest, want := range map[string]string{
			pool("{cidr: 10.20.0.1/16}"):                                               "canonical CIDR form",
			pool("{cidr: 10.20.0.0/16, gateway: 10.21.0.1}"):                           "gateway must lie inside cidr",
			pool("{cidr: 10.20.0.0/16, ranges: [{start: 10.20.1.1, end: 10.21.0.1}]}"): "every range must lie inside cidr",
			pool("{cidr: 10.20.0.0/16, exclude: [10.21.0.0/24]}"):                      "every exclude entry",
			pool("{cidr: 10.20.0.0/16, exclude: [10.20.0.5/24]}"):                      "no host bits set",
			pool("{cidr: 10.20.0.0/16, macPrefix: '01:00'}"):                           "must be a unicast prefix",
			pool("{cidr: 10.20.0.0/16, macPrefix: 'ff'}"):                              "must be a unicast prefix",
			policy("{podSelector: {}, egress: {rate: 500}}"):                           "must be a rate in bit/s from 1k",
			policy("{podSelector: {}, egress: {rate: '1000000000000.5'}}"):             "must be a rate in bit/s from 1k",
			policy("{podSelector: {}, egress: {rate: 10M, burst: '34359738360.5'}}"):   "must be a burst in bits",
			policy("{podSelector: {}, egress: {rate: 10M, burst: 8k}}"):                "from 12144",
			policy("{podSelector: {}, ingress: {rate: 2831}}"):                         "at least 2832 bit/s",
			policy("{podSelector: {}, ingress: {rate: 10M, burst: 100M}}"):             "must last at most 4.295 s",
			policy("{podSelector: {}}"):                                                "at least one of ingress and egress",
		} {
			out, err := apply(t, manifest)
			if err == nil || !strings.Contains(out, want) {
				t.Errorf("%s\ngot %v:\n%s\nwant a refusal containing %q", manifest, err, out, want)
			}
		}
	})

	// applyRendered applies the chart's objects named by keys ("Kind/name"),
	// as rendered for the install, until the test ends.
	applyRendered := func(t *testing.T, keys ...string) {
		t.Helper()
		objs := render(t)
		var docs []string
		for _, key := range keys {
			if objs[key] == nil {
				t.Fatalf("the chart renders no %s", key)
			}
			docs = append(docs, string(objs[key]))
		}
		f := filepath.Join(t.TempDir(), "rendered.yaml")
		if err := os.WriteFile(f, []byte(strings.Join(docs, "\n---\n")), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
			t.Fatalf("apply %v: %v\n%s", keys, err, out)
		}
		t.Cleanup(func() { _, _ = c.Kubectl(context.Background(), "delete", "-f", f, "--wait=false") })
	}

	// The node agent's token, bound to a pod on a node, may patch that
	// node's status (its SR-IOV capacity) and no other's: RBAC cannot name
	// the node, and before, root on one node could rewrite every node's.
	t.Run("NodeAgentPatchesOwnNodeOnly", func(t *testing.T) {
		applyRendered(t, "ServiceAccount/stickynet-nodeagent", "ClusterRole/stickynet-nodeagent", "ClusterRoleBinding/stickynet-nodeagent",
			"ValidatingAdmissionPolicy/stickynet-nodeagent-own-node", "ValidatingAdmissionPolicyBinding/stickynet-nodeagent-own-node")
		k := c.Client()
		for _, n := range []string{"own-a", "own-b"} {
			if _, err := k.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = k.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
		}
		// A pod of the agent's ServiceAccount on own-a (no kubelet runs it),
		// and a token bound to it, as the agent's projected token is.
		pod, err := k.CoreV1().Pods("stickynet-system").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "agent-own-a"},
			Spec: corev1.PodSpec{
				NodeName: "own-a", ServiceAccountName: "stickynet-nodeagent",
				Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/agent"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = k.CoreV1().Pods("stickynet-system").Delete(context.Background(), pod.Name, *metav1.NewDeleteOptions(0))
		})
		tr, err := k.CoreV1().ServiceAccounts("stickynet-system").CreateToken(ctx, "stickynet-nodeagent", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := rest.AnonymousClientConfig(c.RESTConfig())
		cfg.BearerToken = tr.Status.Token
		agent := kubernetes.NewForConfigOrDie(cfg)
		patch := []byte(`{"status":{"capacity":{"stickynet.io/sriov-fast":"4"}}}`)
		want := "the stickynet node agent on node own-a may change the status of its own node only, not of own-b"
		patchB := func() error { _, err := agent.CoreV1().Nodes().PatchStatus(ctx, "own-b", patch); return err }
		waitRefused(patchB, want)
		var errA error
		if errB := patchB(); !apierrors.IsForbidden(errB) || !strings.Contains(errB.Error(), want) {
			t.Errorf("the agent of own-a patches own-b's status: %v; want it refused, naming both nodes", errB)
		}
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if _, errA = agent.CoreV1().Nodes().PatchStatus(ctx, "own-a", patch); errA == nil {
				break
			}
		}
		if errA != nil {
			t.Errorf("the agent of own-a patches own-a's status: %v", errA)
		}
		// A request as the agent's account with no extra at all (here the
		// admin impersonating it; a legacy Secret token) names no node and
		// is not limited: the policy's check must not fail on the missing
		// field (failing closed, it refused such a request).
		imp := c.RESTConfig()
		imp.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:stickynet-system:stickynet-nodeagent"}
		if _, err := kubernetes.NewForConfigOrDie(imp).CoreV1().Nodes().PatchStatus(ctx, "own-b", patch); err != nil {
			t.Errorf("the agent's account without a node in its credentials patches own-b's status: %v; want it passed", err)
		}
	})

	// The webhook's account may patch every Node's status (RBAC), to take
	// stickynet's stale resources off; its policy refuses it anything else.
	t.Run("WebhookOnlyWithdrawsFromNodes", func(t *testing.T) {
		applyRendered(t, "ServiceAccount/stickynet-webhook", "ClusterRole/stickynet-webhook", "ClusterRoleBinding/stickynet-webhook",
			"ValidatingAdmissionPolicy/stickynet-webhook-node-status", "ValidatingAdmissionPolicyBinding/stickynet-webhook-node-status")
		k := c.Client()
		if _, err := k.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "stale-a", Labels: map[string]string{"zone": "a"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k.CoreV1().Nodes().Delete(context.Background(), "stale-a", metav1.DeleteOptions{}) })
		res := `"stickynet.io/network":"110","stickynet.io/sriov-fast":"4","example.com/gpu":"2","cpu":"2"`
		if _, err := k.CoreV1().Nodes().PatchStatus(ctx, "stale-a", []byte(`{"status":{"capacity":{`+res+`},"allocatable":{`+res+`},`+
			`"conditions":[{"type":"Ready","status":"False","reason":"Test","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}`)); err != nil {
			t.Fatal(err)
		}
		imp := c.RESTConfig()
		imp.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:stickynet-system:stickynet-webhook"}
		webhook := kubernetes.NewForConfigOrDie(imp)
		both := func(set string) []byte {
			return []byte(`{"status":{"capacity":{` + set + `},"allocatable":{` + set + `}}}`)
		}
		refused := []struct{ what, patch, want string }{
			{"adds a resource", string(both(`"stickynet.io/sriov-new":"8"`)), "not add or change any: stickynet.io/sriov-new, stickynet.io/sriov-new"},
			{"raises one", string(both(`"cpu":"64"`)), "not add or change any: cpu, cpu"},
			{"removes another's", string(both(`"example.com/gpu":null`)), "not example.com/gpu, example.com/gpu"},
			{"marks the node ready", `{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Test"}]}}`, "and change nothing else there"},
			{"moves its address", `{"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.9"}]}}`, "and change nothing else there"},
			{"relabels it", `{"metadata":{"labels":{"zone":"b"}}}`, "and change nothing else there"},
			{"gives it an owner", `{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Namespace","name":"gone","uid":"00000000-0000-0000-0000-000000000001"}]}}`, "and change nothing else there"},
		}
		// The first, refused, shows the binding and the policy have arrived
		// (as a dry run: one that passed before the policy would have written).
		waitRefused(func() error {
			_, err := webhook.CoreV1().Nodes().Patch(ctx, "stale-a", types.MergePatchType, []byte(refused[0].patch), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, "status")
			return err
		}, refused[0].want)
		for _, r := range refused {
			_, err := webhook.CoreV1().Nodes().PatchStatus(ctx, "stale-a", []byte(r.patch))
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), r.want) {
				t.Errorf("the webhook's account %s on a node: %v; want it refused, saying %q", r.what, err, r.want)
			}
		}
		// What the release controller's leader writes.
		got, err := webhook.CoreV1().Nodes().PatchStatus(ctx, "stale-a", both(`"stickynet.io/network":null,"stickynet.io/sriov-fast":null`))
		if err != nil {
			t.Fatalf("the webhook's account withdraws stickynet's resources: %v", err)
		}
		if _, ok := got.Status.Allocatable["stickynet.io/network"]; ok || got.Status.Allocatable.Name("example.com/gpu", resource.DecimalSI).Value() != 2 || got.Labels["zone"] != "a" {
			t.Errorf("after the withdrawal: labels %v, allocatable %v; want only stickynet's gone", got.Labels, got.Status.Allocatable)
		}
	})

	// The webhook's token may write only stickynet.io/ annotations of pods
	// (RBAC grants patch on every pod) and create only its own certificate's
	// Secret (RBAC cannot name what is created: a service-account token
	// Secret for another account of the namespace would hand out its token).
	t.Run("WebhookOnlyAnnotatesPodsAndMakesItsSecret", func(t *testing.T) {
		applyRendered(t, "ServiceAccount/stickynet-webhook", "ClusterRole/stickynet-webhook", "ClusterRoleBinding/stickynet-webhook",
			"Role/stickynet-webhook", "RoleBinding/stickynet-webhook",
			"ValidatingAdmissionPolicy/stickynet-webhook-pods", "ValidatingAdmissionPolicyBinding/stickynet-webhook-pods",
			"ValidatingAdmissionPolicy/stickynet-webhook-secrets", "ValidatingAdmissionPolicyBinding/stickynet-webhook-secrets")
		k := c.Client()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: "annotated", Namespace: "default", Labels: map[string]string{"app": "a"},
				Annotations: map[string]string{"keep": "x", "stickynet.io/ingress-bandwidth": "10M"},
			},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
		}
		if _, err := k.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = k.CoreV1().Pods("default").Delete(context.Background(), "annotated", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		})
		imp := c.RESTConfig()
		imp.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:stickynet-system:stickynet-webhook"}
		webhook := kubernetes.NewForConfigOrDie(imp)
		refused := []struct{ what, patch, want string }{
			{"adds another annotation", `{"metadata":{"annotations":{"other.io/x":"y"}}}`, "not other.io/x"},
			{"removes one", `{"metadata":{"annotations":{"keep":null}}}`, "not keep"},
			{"relabels it", `{"metadata":{"labels":{"app":"b"}}}`, "and nothing else there"},
			{"gives it an owner", `{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Namespace","name":"gone","uid":"00000000-0000-0000-0000-000000000001"}]}}`, "and nothing else there"},
			{"adds a finalizer", `{"metadata":{"finalizers":["example.com/hold"]}}`, "and nothing else there"},
			{"changes its image", `{"spec":{"containers":[{"name":"c","image":"example.com/other:1"}]}}`, "and nothing else there"},
		}
		patch := func(p string, opts metav1.PatchOptions) error {
			_, err := webhook.CoreV1().Pods("default").Patch(ctx, "annotated", types.StrategicMergePatchType, []byte(p), opts)
			return err
		}
		// As for the node-status policy: the first refusal, a dry run,
		// shows the binding and the policy have reached the API server.
		waitRefused(func() error { return patch(refused[0].patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}) }, refused[0].want)
		for _, r := range refused {
			if err := patch(r.patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), r.want) {
				t.Errorf("the webhook's account %s on a pod: %v; want it refused, saying %q", r.what, err, r.want)
			}
		}
		// What the release controller writes (a merge patch, as it sends).
		got, err := webhook.CoreV1().Pods("default").Patch(ctx, "annotated", types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"stickynet.io/ingress-bandwidth":"20M","stickynet.io/placement-changed":"1"}}}`), metav1.PatchOptions{})
		if err != nil {
			t.Fatalf("the webhook's account writes stickynet.io/ annotations: %v", err)
		}
		if got.Annotations["stickynet.io/ingress-bandwidth"] != "20M" || got.Annotations["keep"] != "x" || got.Labels["app"] != "a" {
			t.Errorf("after the release controller's patch: labels %v, annotations %v", got.Labels, got.Annotations)
		}

		secrets := webhook.CoreV1().Secrets("stickynet-system")
		const refusedSecret = "may only create its own Secret stickynet-webhook-cert, of type Opaque"
		waitRefused(func() error {
			_, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}, refusedSecret)
		for _, sec := range []*corev1.Secret{
			{ObjectMeta: metav1.ObjectMeta{Name: "stickynet-scheduler-token", Annotations: map[string]string{corev1.ServiceAccountNameKey: "stickynet-scheduler"}}, Type: corev1.SecretTypeServiceAccountToken},
			{ObjectMeta: metav1.ObjectMeta{Name: "stickynet-webhook-cert", Annotations: map[string]string{corev1.ServiceAccountNameKey: "stickynet-scheduler"}}, Type: corev1.SecretTypeServiceAccountToken},
			{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		} {
			_, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), refusedSecret) {
				t.Errorf("the webhook's account creates Secret %s of type %q: %v; want it refused, saying %q", sec.Name, sec.Type, err, refusedSecret)
			}
		}
		// What certs/ makes again when its Secret was deleted.
		if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "stickynet-webhook-cert"}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("the webhook's account creates its own Secret: %v", err)
		}
		t.Cleanup(func() {
			_ = k.CoreV1().Secrets("stickynet-system").Delete(context.Background(), "stickynet-webhook-cert", metav1.DeleteOptions{})
		})
	})

	// The bundled etcd's members formed their cluster from its replica
	// count, and its volumes cannot change: an upgrade that changes either
	// fails and names the value; one that keeps them renders.
	t.Run("UpgradeKeepsEtcdMembers", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "etcd.yaml")
		if err := os.WriteFile(f, render(t)["StatefulSet/stickynet-etcd"], 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
			t.Fatalf("apply the install's etcd StatefulSet: %v\n%s", err, out)
		}
		t.Cleanup(func() { _, _ = c.Kubectl(context.Background(), "delete", "-f", f, "--wait=false") })
		out, stderr, err := testenv.Helm(t, upgradeArgs("etcd.bundled.replicas=1")...)
		if want := "etcd.bundled.replicas: invalid value 1: the bundled etcd cluster in stickynet-system runs 3 members"; err == nil || !strings.Contains(stderr, want) {
			t.Errorf("upgrade from 3 to 1 etcd members: %v\n%s%s\nwant a failure saying %q", err, out, stderr, want)
		}
		// Its volumes neither: the API server refuses the StatefulSet's
		// change, after the upgrade changed the other objects.
		for _, c := range []struct{ set, want string }{
			{"etcd.bundled.storage=4Gi", `etcd.bundled.storage: invalid value "4Gi": the bundled etcd's volumes in stickynet-system were made with 2Gi`},
			{"etcd.bundled.storageClassName=fast", `etcd.bundled.storageClassName: invalid value "fast": the bundled etcd's volumes in stickynet-system were made with ""`},
		} {
			out, stderr, err := testenv.Helm(t, upgradeArgs(c.set)...)
			if err == nil || !strings.Contains(stderr, c.want) {
				t.Errorf("upgrade with %s: %v\n%s%s\nwant a failure saying %q", c.set, err, out, stderr, c.want)
			}
		}
		if etcd := objects(t, helm(t, upgradeArgs()...))["StatefulSet/stickynet-etcd"]; !bytes.Contains(etcd, []byte("replicas: 3")) {
			t.Errorf("upgrade keeping 3 members rendered:\n%s", etcd)
		}
		// A size the API server writes in its own form ("2048Mi" as "2Gi"):
		// an upgrade with the same value renders.
		if err := os.WriteFile(f, render(t, "etcd.bundled.storage=2048Mi")["StatefulSet/stickynet-etcd"], 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
			t.Fatalf("apply the etcd StatefulSet with 2048Mi: %v\n%s", err, out)
		}
		if out, err := c.Kubectl(ctx, "get", "statefulset", "-n", "stickynet-system", "stickynet-etcd", "-o", "jsonpath={.spec.volumeClaimTemplates[0].spec.resources.requests.storage}"); err != nil || string(out) != "2Gi" {
			t.Errorf("the API server keeps 2048Mi as %q (%v); the test expects it to write 2Gi", out, err)
		}
		if _, stderr, err := testenv.Helm(t, upgradeArgs("etcd.bundled.storage=2048Mi")...); err != nil {
			t.Errorf("upgrade with the storage as installed, 2048Mi: %v\n%s", err, stderr)
		}
		if _, stderr, err := testenv.Helm(t, upgradeArgs("etcd.bundled.storage=4Gi")...); err == nil || !strings.Contains(stderr, `etcd.bundled.storage: invalid value "4Gi": the bundled etcd's volumes in stickynet-system were made with 2Gi`) {
			t.Errorf("upgrade from 2048Mi to 4Gi: %v\n%s", err, stderr)
		}
	})

	// The webhook's state is in one etcd under one key prefix: an upgrade
	// that would move it to another (empty) store fails and names the
	// value, unless etcd.allowStoreChange says so; one that keeps the store
	// renders.
	t.Run("UpgradeKeepsStateStore", func(t *testing.T) {
		// installed applies the webhook Deployment of an install with sets,
		// its --etcd-endpoints replaced by endpoints where given.
		installed := func(endpoints string, sets ...string) {
			t.Helper()
			doc := render(t, sets...)["Deployment/stickynet-webhook"]
			if endpoints != "" {
				doc = regexp.MustCompile(`--etcd-endpoints=\S+`).ReplaceAll(doc, []byte("--etcd-endpoints="+endpoints))
			}
			f := filepath.Join(t.TempDir(), "webhook.yaml")
			if err := os.WriteFile(f, doc, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
				t.Fatalf("apply the install's webhook Deployment: %v\n%s", err, out)
			}
		}
		t.Cleanup(func() { // gone before the next subtests' upgrades look it up
			_, _ = c.Kubectl(context.Background(), "delete", "deployment", "-n", "stickynet-system", "stickynet-webhook")
		})
		upgrade := func(sets ...string) (string, error) {
			t.Helper()
			_, stderr, err := testenv.Helm(t, upgradeArgs(sets...)...)
			return stderr, err
		}
		refused := func(want string, sets ...string) {
			t.Helper()
			stderr, err := upgrade(sets...)
			if err == nil || !strings.Contains(stderr, want) || !strings.Contains(stderr, "etcd.allowStoreChange=true") {
				t.Errorf("upgrade with %v: %v\n%s\nwant a failure saying %q and naming etcd.allowStoreChange", sets, err, stderr, want)
			}
			if stderr, err := upgrade(append(sets, "etcd.allowStoreChange=true")...); err != nil {
				t.Errorf("upgrade with %v and etcd.allowStoreChange=true: %v\n%s", sets, err, stderr)
			}
		}
		kept := func(sets ...string) {
			t.Helper()
			if stderr, err := upgrade(sets...); err != nil {
				t.Errorf("upgrade with %v: %v\n%s", sets, err, stderr)
			}
		}
		const why = "an upgrade to another state store starts from an empty one"
		installed("")
		kept()
		refused(`etcd.keyPrefix: invalid value "/other/": the installed webhook keeps its state under "/stickynet/"; `+why, "etcd.keyPrefix=/other/")
		// Leaving the bundled etcd deletes it, even with a member's URL kept.
		refused(`etcd.endpoints: invalid value "http://etcd.example:2379" (etcd.bundled.enabled false): the installed webhook keeps its state in the bundled etcd, which this upgrade deletes`,
			"etcd.bundled.enabled=false", "etcd.endpoints={http://etcd.example:2379}")
		refused("which this upgrade deletes", "etcd.endpoints={http://stickynet-etcd-0.stickynet-etcd-peers.stickynet-system.svc:2379,http://etcd.example:2379}")
		// An earlier chart gave the bundled etcd's client Service.
		installed("http://stickynet-etcd.stickynet-system.svc:2379")
		kept()
		// An etcd of one's own: the same while an endpoint stays.
		installed("", "etcd.endpoints={http://a.example:2379,http://b.example:2379}")
		kept("etcd.endpoints={http://b.example:2379,http://c.example:2379}")
		refused(`etcd.endpoints: invalid value "http://c.example:2379" (etcd.bundled.enabled true): it shares no endpoint with the etcd the installed webhook keeps its state in (http://a.example:2379,http://b.example:2379); `+why,
			"etcd.endpoints={http://c.example:2379}")
		refused("it shares no endpoint", "etcd.endpoints=null")
	})

	// The running scheduler reads the extender's CA only at start: an
	// upgrade must render the CA and certificate the install left, and so
	// the same checksums (no roll) — else the scheduler distrusts the
	// extender and every pod of its profile stays Pending.
	t.Run("UpgradeKeepsExtenderCert", func(t *testing.T) {
		installed := render(t)
		secret := installed["Secret/stickynet-extender-tls"]
		// An earlier chart's Secret had no cert-names annotation; it holds the
		// Service's names, and an upgrade keeps it too.
		annotation := regexp.MustCompile(`(?m)^\s*annotations: \{stickynet.io/cert-names: .*\}\n`)
		if !annotation.Match(secret) {
			t.Fatalf("the extender Secret lacks its cert-names annotation:\n%s", secret)
		}
		var before tlsState
		for _, left := range [][]byte{annotation.ReplaceAll(secret, nil), secret} {
			f := filepath.Join(t.TempDir(), "installed.yaml")
			if err := os.WriteFile(f, bytes.Join([][]byte{left, installed["ConfigMap/stickynet-extender-ca"]}, []byte("\n---\n")), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
				t.Fatalf("apply the install's extender Secret and CA: %v\n%s", err, out)
			}
			upgraded := objects(t, helm(t, upgradeArgs()...))
			before = extenderTLS(t, installed)
			if after := extenderTLS(t, upgraded); before != after {
				t.Errorf("after an upgrade from a Secret with annotation %t the extender's TLS is\n%+v\nwant the installed one\n%+v",
					bytes.Equal(left, secret), after, before)
			}
		}
		// A name added (a scheduler of one's own on the host network)
		// needs a certificate that holds it: a new pair, and the chart's
		// scheduler rolls.
		renamed := extenderTLS(t, objects(t, helm(t, upgradeArgs("extender.extraCertNames={10.96.0.50,sched.example}")...)))
		if renamed.CA == before.CA || renamed.SchedulerCASum == before.SchedulerCASum {
			t.Error("an upgrade with extender.extraCertNames kept the installed CA, whose certificate lacks the names")
		}
		block, _ := pem.Decode([]byte(renamed.Cert))
		if block == nil {
			t.Fatalf("extender certificate %q is not PEM", renamed.Cert)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		svc := "stickynet-extender.stickynet-system.svc"
		if !slices.Equal(cert.DNSNames, []string{svc, svc + ".cluster.local", "sched.example"}) ||
			len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "10.96.0.50" {
			t.Errorf("extender certificate with extraCertNames holds DNS names %v and IPs %v; want the Service's names, sched.example and 10.96.0.50", cert.DNSNames, cert.IPAddresses)
		}
	})
}

// tlsState is what the extender's TLS and the scheduler's trust in it
// render to.
type tlsState struct {
	CA, Cert, Key                  string
	SchedulerCASum, ExtenderTLSSum string
}

// extenderTLS reads the extender's CA, certificate and key and the pod
// template checksums that follow them from a rendered chart.
func extenderTLS(t *testing.T, objs map[string][]byte) tlsState {
	t.Helper()
	secret, cm := &corev1.Secret{}, &corev1.ConfigMap{}
	if err := yaml.Unmarshal(objs["Secret/stickynet-extender-tls"], secret); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(objs["ConfigMap/stickynet-extender-ca"], cm); err != nil {
		t.Fatal(err)
	}
	return tlsState{
		CA: cm.Data["ca.crt"], Cert: string(secret.Data["tls.crt"]), Key: string(secret.Data["tls.key"]),
		SchedulerCASum: podTemplate(t, objs["Deployment/stickynet-scheduler"]).Annotations["checksum/extender-ca"],
		ExtenderTLSSum: podTemplate(t, objs["Deployment/stickynet-extender"]).Annotations["checksum/tls"],
	}
}

// podTemplate decodes the pod template of a rendered Deployment, DaemonSet
// or StatefulSet.
func podTemplate(t *testing.T, doc []byte) corev1.PodTemplateSpec {
	t.Helper()
	var obj struct {
		Spec struct {
			Template corev1.PodTemplateSpec `json:"template"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		t.Fatal(err)
	}
	if len(obj.Spec.Template.Spec.Containers) == 0 { // an object the render lacks reads as an empty template
		t.Fatalf("no pod template with containers in %.60q", doc)
	}
	return obj.Spec.Template
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestSchedulerRollsWithItsInputs: kube-scheduler reads its configuration
// and the extender's CA only at start, so its pod template carries a
// checksum of each (and the extender's one of its certificate): the config
// checksum is that of the rendered configuration, equal between two renders
// of the same values and different when extender.vfResources changes; the CA
// and TLS checksums are those of the CA and certificate rendered with them
// (new ones on each helm template, where lookup finds no installed release).
func TestSchedulerRollsWithItsInputs(t *testing.T) {
	testenv.Integration(t)
	configSum := func(objs map[string][]byte) string {
		t.Helper()
		cm := &corev1.ConfigMap{}
		if err := yaml.Unmarshal(objs["ConfigMap/stickynet-scheduler-config"], cm); err != nil {
			t.Fatal(err)
		}
		got := podTemplate(t, objs["Deployment/stickynet-scheduler"]).Annotations["checksum/config"]
		if want := sha256Hex(cm.Data["config.yaml"]); got != want {
			t.Errorf("scheduler pod template has checksum/config %q; want %q, the sha256 of the configuration it mounts", got, want)
		}
		return got
	}
	first, second := render(t), render(t)
	vf := render(t, "extender.vfResources={stickynet.io/sriov-fast}")
	if a, b := configSum(first), configSum(second); a != b {
		t.Errorf("two renders of the same values give checksum/config %q and %q; want equal (the scheduler would roll on every upgrade)", a, b)
	}
	if a, b := configSum(first), configSum(vf); a == b {
		t.Errorf("checksum/config %q does not change with extender.vfResources; want a new one (the scheduler would keep the old profile)", a)
	}
	for name, objs := range map[string]map[string][]byte{"first": first, "second": second, "vfResources": vf} {
		s := extenderTLS(t, objs)
		if s.CA == "" || s.Cert == "" || s.Key == "" {
			t.Fatalf("%s render: extender CA, certificate or key empty: %+v", name, s)
		}
		if want := sha256Hex(s.CA); s.SchedulerCASum != want {
			t.Errorf("%s render: scheduler checksum/extender-ca %q; want %q, the sha256 of the CA it mounts", name, s.SchedulerCASum, want)
		}
		if want := sha256Hex(s.Cert + s.Key); s.ExtenderTLSSum != want {
			t.Errorf("%s render: extender checksum/tls %q; want %q, the sha256 of its certificate and key", name, s.ExtenderTLSSum, want)
		}
	}
	if a, b := extenderTLS(t, first), extenderTLS(t, second); a.CA == b.CA || a.SchedulerCASum == b.SchedulerCASum {
		t.Errorf("two helm template renders share the CA %v / checksum %q; without a cluster each makes its own, and the checksum must follow it", a.CA == b.CA, a.SchedulerCASum)
	}
}

// TestEmptySchedulerName: with webhook.schedulerName empty ("leaves pods
// alone") the chart runs the extender but no scheduler of its own (its
// profile would be named null, that is a second default-scheduler); a
// default-scheduler name, or vfResources without a scheduler, is refused by
// name.
func TestEmptySchedulerName(t *testing.T) {
	testenv.Integration(t)
	helm(t, "lint", "--strict", chartDir, "--set", "webhook.schedulerName=")
	objs := render(t, "webhook.schedulerName=")
	for _, gone := range []string{"Deployment/stickynet-scheduler", "ConfigMap/stickynet-scheduler-config", "ServiceAccount/stickynet-scheduler"} {
		if _, ok := objs[gone]; ok {
			t.Errorf("with webhook.schedulerName empty the chart renders %s; want no scheduler of its own", gone)
		}
	}
	for _, kept := range []string{"Deployment/stickynet-extender", "Service/stickynet-extender", "ConfigMap/stickynet-extender-ca"} {
		if _, ok := objs[kept]; !ok {
			t.Errorf("with webhook.schedulerName empty the chart lacks %s; the operator's own scheduler uses it", kept)
		}
	}
	if args := podTemplate(t, objs["Deployment/stickynet-webhook"]).Spec.Containers[0].Args; !slices.Contains(args, "--scheduler-name=") {
		t.Errorf("webhook args %v lack an empty --scheduler-name=", args)
	}
	for _, tc := range []struct {
		sets []string
		want []string
	}{
		{[]string{"webhook.schedulerName=default-scheduler"}, []string{"webhook.schedulerName", `"default-scheduler"`}},
		{[]string{"webhook.schedulerName=", "extender.vfResources={stickynet.io/sriov-fast}"}, []string{"extender.vfResources", "webhook.schedulerName"}},
		{[]string{"extender.vfPlacement=fill"}, []string{"extender.vfPlacement", `"fill"`, "spread, pack or none"}},
	} {
		refused(t, tc.sets, tc.want...)
	}
}

// refused: helm template with sets fails with a message holding each of want.
func refused(t *testing.T, sets []string, want ...string) {
	t.Helper()
	args := []string{"template", "sn", chartDir, "--namespace", "stickynet-system"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	_, stderr, err := testenv.Helm(t, args...)
	if err == nil {
		t.Errorf("helm template --set %v succeeds; want a refusal naming %q", sets, want)
		return
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("helm template --set %v: refusal lacks %q:\n%s", sets, w, stderr)
		}
	}
}

// TestImagePullSecrets: every pod the chart runs (webhook, extender, its
// scheduler, node agent, bundled etcd) gets imagePullSecrets.
func TestImagePullSecrets(t *testing.T) {
	testenv.Integration(t)
	objs := render(t, "imagePullSecrets[0].name=regcred")
	var workloads []string
	for key, doc := range objs {
		kind, _, _ := strings.Cut(key, "/")
		if kind != "Deployment" && kind != "DaemonSet" && kind != "StatefulSet" {
			continue
		}
		workloads = append(workloads, key)
		if got := podTemplate(t, doc).Spec.ImagePullSecrets; !slices.Equal(got, []corev1.LocalObjectReference{{Name: "regcred"}}) {
			t.Errorf("%s has imagePullSecrets %v; want [regcred]", key, got)
		}
	}
	if len(workloads) != 5 {
		t.Errorf("checked %v; want 5 workloads (webhook, extender, scheduler, node agent, etcd)", workloads)
	}
}

// TestEtcdEnv: etcd.bundled.env reaches the etcd container after its own NAME.
func TestEtcdEnv(t *testing.T) {
	testenv.Integration(t)
	objs := render(t, "etcd.bundled.env[0].name=GOGC", "etcd.bundled.env[0].value=400")
	c := podTemplate(t, objs["StatefulSet/stickynet-etcd"]).Spec.Containers[0]
	if len(c.Env) != 2 || c.Env[0].Name != "NAME" || c.Env[1].Name != "GOGC" || c.Env[1].Value != "400" {
		t.Fatalf("etcd container env = %+v; want NAME, then GOGC=400", c.Env)
	}
	if c := podTemplate(t, render(t)["StatefulSet/stickynet-etcd"]).Spec.Containers[0]; len(c.Env) != 1 {
		t.Fatalf("etcd container env by default = %+v; want NAME only", c.Env)
	}
	// A space quota below the volume (2Gi, with the WAL and snapshots).
	for set, want := range map[string]string{"": "--quota-backend-bytes=1073741824", "etcd.bundled.quotaBackendBytes=4294967296": "--quota-backend-bytes=4294967296"} {
		var sets []string
		if set != "" {
			sets = append(sets, set)
		}
		if c := podTemplate(t, render(t, sets...)["StatefulSet/stickynet-etcd"]).Spec.Containers[0]; !slices.Contains(c.Command, want) {
			t.Errorf("etcd command with %q = %v; want %s", set, c.Command, want)
		}
	}
}

// TestEtcdProbes: the bundled etcd's liveness and startup probes ask the
// metrics listener's /livez, which etcd of the tested version answers there,
// also in a member without a quorum (not restarted for it), whose /readyz,
// the readiness probe's path, does not answer.
func TestEtcdProbes(t *testing.T) {
	testenv.Integration(t)
	c := podTemplate(t, render(t)["StatefulSet/stickynet-etcd"]).Spec.Containers[0]
	metricsPort := -1
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = int(p.ContainerPort)
		}
	}
	if !slices.Contains(c.Command, fmt.Sprintf("--listen-metrics-urls=http://0.0.0.0:%d", metricsPort)) {
		t.Fatalf("etcd command %v; want its metrics listener on the port named metrics (%d)", c.Command, metricsPort)
	}
	for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/livez" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("etcd %s probe %+v; want an httpGet of /livez on port metrics", what, p)
		}
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		t.Fatalf("etcd readiness probe %+v; want an httpGet of /readyz", p)
	}
	// A member of two whose peer never comes: no leader, no quorum.
	ports := make([]int, 3)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	testenv.StartEtcd(t, "--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		fmt.Sprintf("--initial-cluster=test=%s,gone=http://127.0.0.1:%d", peer, ports[1]),
		fmt.Sprintf("--listen-metrics-urls=http://127.0.0.1:%d", ports[2]))
	get := func(path string) int {
		cl := http.Client{Timeout: 2 * time.Second}
		resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d%s", ports[2], path))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	testenv.Eventually(t.Context(), t, 20*time.Second, "/livez of a member without a quorum", func() (bool, string) {
		code := get("/livez")
		return code == http.StatusOK, fmt.Sprintf("/livez answered %d; want 200", code)
	})
	if code := get("/readyz"); code == http.StatusOK {
		t.Errorf("/readyz of a member without a quorum answered 200; the test expects it not to (else it shows nothing of /livez)")
	}
}

// TestEtcdEndpoints: the webhook reaches the bundled etcd through each
// member's own name, so that its client spreads requests over the members
// (through the client Service it kept one connection to the first it
// reached); etcd.endpoints of an etcd of one's own are passed as given.
func TestEtcdEndpoints(t *testing.T) {
	testenv.Integration(t)
	for _, c := range []struct {
		sets []string
		want string
	}{
		{nil, "--etcd-endpoints=http://stickynet-etcd-0.stickynet-etcd-peers.stickynet-system.svc:2379," +
			"http://stickynet-etcd-1.stickynet-etcd-peers.stickynet-system.svc:2379,http://stickynet-etcd-2.stickynet-etcd-peers.stickynet-system.svc:2379"},
		{[]string{"etcd.bundled.replicas=1"}, "--etcd-endpoints=http://stickynet-etcd-0.stickynet-etcd-peers.stickynet-system.svc:2379"},
		{[]string{"etcd.endpoints={https://a:2379,https://b:2379}"}, "--etcd-endpoints=https://a:2379,https://b:2379"},
	} {
		args := podTemplate(t, render(t, c.sets...)["Deployment/stickynet-webhook"]).Spec.Containers[0].Args
		if !slices.Contains(args, c.want) {
			t.Errorf("webhook args with %v = %v; want %s", c.sets, args, c.want)
		}
	}
}

// TestPriorityAndRequests: the pods pod creation waits for (webhook,
// extender, its scheduler, bundled etcd) are system-cluster-critical by
// default, the node agent system-node-critical, and empty priorityClassNames
// leave the cluster's default; the bundled etcd requests
// CPU and memory (not BestEffort) and takes a nodeSelector and tolerations.
func TestPriorityAndRequests(t *testing.T) {
	testenv.Integration(t)
	want := map[string]string{
		"Deployment/stickynet-webhook": "system-cluster-critical", "Deployment/stickynet-extender": "system-cluster-critical",
		"Deployment/stickynet-scheduler": "system-cluster-critical", "StatefulSet/stickynet-etcd": "system-cluster-critical",
		"DaemonSet/stickynet-nodeagent": "system-node-critical",
	}
	objs := render(t)
	for key, class := range want {
		doc, ok := objs[key]
		if !ok {
			t.Fatalf("chart renders no %s", key)
		}
		if got := podTemplate(t, doc).Spec.PriorityClassName; got != class {
			t.Errorf("%s has priorityClassName %q; want %q", key, got, class)
		}
	}
	etcd := podTemplate(t, objs["StatefulSet/stickynet-etcd"]).Spec
	if r := etcd.Containers[0].Resources.Requests; r.Cpu().IsZero() || r.Memory().IsZero() {
		t.Errorf("bundled etcd requests %v; want cpu and memory (not BestEffort)", r)
	}

	objs = render(t, "webhook.priorityClassName=", "extender.priorityClassName=", "etcd.bundled.priorityClassName=", "nodeAgent.priorityClassName=",
		"etcd.bundled.nodeSelector.disk=ssd", "etcd.bundled.tolerations[0].key=dedicated", "etcd.bundled.tolerations[0].operator=Exists",
		"extender.nodeSelector.disk=ssd", "extender.tolerations[0].key=dedicated", "extender.tolerations[0].operator=Exists")
	for key := range want {
		if got := podTemplate(t, objs[key]).Spec.PriorityClassName; got != "" {
			t.Errorf("%s with an empty priorityClassName has %q; want none", key, got)
		}
	}
	for _, key := range []string{"StatefulSet/stickynet-etcd", "Deployment/stickynet-extender", "Deployment/stickynet-scheduler"} {
		if spec := podTemplate(t, objs[key]).Spec; spec.NodeSelector["disk"] != "ssd" || len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" {
			t.Errorf("%s nodeSelector %v, tolerations %v; want disk=ssd and the dedicated toleration", key, spec.NodeSelector, spec.Tolerations)
		}
	}
}

// TestValuesSchema: values.schema.json refuses a misspelt key and values of
// the wrong type or out of range, naming where, which rendered before (a
// typo silently left the default; a bad duration or boolean rendered a flag
// the binary refuses at start, in a crash loop), and takes what is valid.
func TestValuesSchema(t *testing.T) {
	testenv.Integration(t)
	for set, want := range map[string]string{
		"webhook.replica=3":              "at '/webhook': additional properties 'replica' not allowed",
		"nodeAgent.mtu=abc":              "at '/nodeAgent/mtu': got string, want integer",
		"webhook.reservationTTL=forever": "at '/webhook/reservationTTL': 'forever' does not match pattern",
		"extender.preferLastNode=maybe":  "at '/extender/preferLastNode': got string, want boolean",
		"etcd.bundled.replicas=2":        "at '/etcd/bundled/replicas': value must be one of 1, 3, 5, 7",
		"webhook.replicas=0":             "at '/webhook/replicas': minimum: got 0, want 1",
		"nodeAgent.datapathType=kernel":  "at '/nodeAgent/datapathType': value must be one of 'auto', 'netdev', 'system'",
		"nodeAgent.maxUnavailable=0":     "at '/nodeAgent/maxUnavailable'",
		"nodeAgent.maxUnavailable=0%":    "at '/nodeAgent/maxUnavailable'",
		// A bare file name became a hostPath the kubelet refuses: the
		// agent stayed in ContainerCreating.
		"nodeAgent.fallbackConflist=calico.conflist": "at '/nodeAgent/fallbackConflist': 'calico.conflist' does not match pattern",
	} {
		refused(t, []string{set}, want)
	}
	// Helm's global values (a parent chart's) and a build number as the tag.
	if c := podTemplate(t, render(t, "global.registry=example", "image.tag=20261206")["Deployment/stickynet-webhook"]).Spec.Containers[0]; c.Image != "ghcr.io/stickynet/stickynet:20261206" {
		t.Errorf("image.tag=20261206 gave image %s", c.Image)
	}
	// Build numbers as the tags, from --set and from a values file (as a
	// GitOps tool passes them): before, the file's rendered as
	// 2.0261206e+07 and the scheduler's as %!s(int64=20261206).
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte("image:\n  tag: 20261206\nextender:\n  scheduler:\n    tag: 20261207\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, how := range [][]string{{"-f", values}, {"--set", "image.tag=20261206", "--set", "extender.scheduler.tag=20261207"}} {
		objs := objects(t, helm(t, append([]string{"template", "sn", chartDir, "--namespace", "stickynet-system"}, how...)...))
		if c := podTemplate(t, objs["Deployment/stickynet-webhook"]).Spec.Containers[0]; c.Image != "ghcr.io/stickynet/stickynet:20261206" {
			t.Errorf("%v: webhook image %s; want tag 20261206", how, c.Image)
		}
		if c := podTemplate(t, objs["Deployment/stickynet-scheduler"]).Spec.Containers[0]; c.Image != "registry.k8s.io/kube-scheduler:20261207" {
			t.Errorf("%v: scheduler image %s; want tag 20261207", how, c.Image)
		}
	}
	ds := render(t, "nodeAgent.maxUnavailable=10%", "webhook.releaseGrace=1m30s")["DaemonSet/stickynet-nodeagent"]
	if !bytes.Contains(ds, []byte("maxUnavailable: 10%")) || !bytes.Contains(ds, []byte("kubernetes.io/os: linux")) {
		t.Errorf("node agent DaemonSet with maxUnavailable 10%%:\n%s", ds)
	}
}

// TestWebhookValuesChecked: webhook.timeoutSeconds that leaves the etcd
// requests (timeoutSeconds - 3 s) under 1 s, or that the API server refuses,
// a webhook.reservationTTL under 1m and an unknown webhook.certMode are
// refused naming the value and what is accepted; 4 gives a 1 s store timeout.
func TestWebhookValuesChecked(t *testing.T) {
	testenv.Integration(t)
	for _, v := range []string{"0", "3", "31", "2.5"} {
		refused(t, []string{"webhook.timeoutSeconds=" + v}, "webhook.timeoutSeconds: "+v, "4 to 30")
	}
	for _, v := range []string{"selfsigned", ""} {
		refused(t, []string{"webhook.certMode=" + v}, fmt.Sprintf("webhook.certMode: %q", v), "self or cert-manager")
	}
	refused(t, []string{"etcd.tlsSecret=etcd-client"}, `etcd.tlsSecret: "etcd-client"`, "the bundled etcd serves plain http")
	// A reservation TTL under 1m passed the schema, and the binary refused
	// it at start: no replica ready, every pod of an opted-in namespace refused.
	for _, v := range []string{"30s", "0.5m", "59s999ms"} {
		refused(t, []string{"webhook.reservationTTL=" + v}, "webhook.reservationTTL: "+v+" is not accepted", "at least 1m")
	}
	for _, v := range []string{"1m", "90s", "0s", "1h30m"} {
		if args := podTemplate(t, render(t, "webhook.reservationTTL="+v)["Deployment/stickynet-webhook"]).Spec.Containers[0].Args; !slices.Contains(args, "--reservation-ttl="+v) {
			t.Errorf("webhook.reservationTTL=%s: webhook args %v", v, args)
		}
	}
	// webhook.networkResource: the flag only to turn it off, so that values
	// without the key (helm upgrade --reuse-values from a chart without it)
	// render no empty boolean, which the binary refuses.
	for set, want := range map[string][]string{
		"webhook.networkResource=false": {"--network-resource=false"},
		"webhook.networkResource=true":  nil,
		"webhook.networkResource=null":  nil,
	} {
		args := podTemplate(t, render(t, set)["Deployment/stickynet-webhook"]).Spec.Containers[0].Args
		got := slices.DeleteFunc(slices.Clone(args), func(a string) bool { return !strings.HasPrefix(a, "--network-resource") })
		if !slices.Equal(got, want) {
			t.Errorf("%s: webhook args %v; want %v", set, got, want)
		}
	}
	// Server-side TLS only: the CA, no client certificate.
	args := podTemplate(t, render(t, "etcd.endpoints={https://etcd.example:2379}", "etcd.tlsSecret=etcd-ca", "etcd.tlsClientCert=false")["Deployment/stickynet-webhook"]).Spec.Containers[0].Args
	if !slices.Contains(args, "--etcd-ca-file=/etc/stickynet/etcd-tls/ca.crt") || slices.ContainsFunc(args, func(a string) bool {
		return strings.HasPrefix(a, "--etcd-cert-file") || strings.HasPrefix(a, "--etcd-key-file")
	}) {
		t.Errorf("etcd.tlsClientCert=false: webhook args %v", args)
	}
	for timeout, want := range map[string]string{"4": "--store-timeout=1s", "30": "--store-timeout=27s"} {
		args := podTemplate(t, render(t, "webhook.timeoutSeconds="+timeout)["Deployment/stickynet-webhook"]).Spec.Containers[0].Args
		if !slices.Contains(args, want) {
			t.Errorf("webhook.timeoutSeconds=%s: webhook args %v lack %s", timeout, args, want)
		}
	}
}

// TestSchedulerImage: kube-scheduler's tag is the cluster's version
// (vMAJOR.MINOR.PATCH of it) unless extender.scheduler.tag, or a tag in
// extender.scheduler.image, says otherwise; both at once is refused.
// TestWebhookNodeStatusPolicy: the policy that limits the webhook's writes to
// Node status names every field of NodeStatus but the two it may take
// stickynet's resources from, and the writable metadata the status
// subresource keeps (a field added to NodeStatus by a later Kubernetes, such
// as declaredFeatures, which the scheduler filters on, would otherwise be
// the webhook's to write).
func TestWebhookNodeStatusPolicy(t *testing.T) {
	testenv.Integration(t)
	policy := string(render(t)["ValidatingAdmissionPolicy/stickynet-webhook-node-status"])
	if policy == "" {
		t.Fatal("the chart renders no ValidatingAdmissionPolicy stickynet-webhook-node-status")
	}
	var want []string
	st := reflect.TypeFor[corev1.NodeStatus]()
	for i := range st.NumField() {
		name, _, _ := strings.Cut(st.Field(i).Tag.Get("json"), ",")
		if name != "capacity" && name != "allocatable" {
			want = append(want, "object.status.?"+name+" == oldObject.status.?"+name)
		}
	}
	for _, name := range []string{"labels", "annotations", "ownerReferences", "finalizers"} {
		want = append(want, "object.metadata.?"+name+" == oldObject.metadata.?"+name)
	}
	for _, w := range want {
		if !strings.Contains(policy, w) {
			t.Errorf("the webhook's node-status policy does not check %q", w)
		}
	}
}

func TestSchedulerImage(t *testing.T) {
	testenv.Integration(t)
	for _, tc := range []struct {
		kube string
		sets []string
		want string
	}{
		{"v1.31.0", nil, "registry.k8s.io/kube-scheduler:v1.31.0"},
		{"v1.31.4+k3s1", nil, "registry.k8s.io/kube-scheduler:v1.31.4"},
		{"v1.32.2-gke.1297002", nil, "registry.k8s.io/kube-scheduler:v1.32.2"},
		{"v1.31.4", []string{"extender.scheduler.tag=v1.31.9"}, "registry.k8s.io/kube-scheduler:v1.31.9"},
		{"v1.31.4", []string{"extender.scheduler.image=mirror.example:5000/kube-scheduler"}, "mirror.example:5000/kube-scheduler:v1.31.4"},
		{"v1.31.4", []string{"extender.scheduler.image=mirror.example:5000/kube-scheduler:v1.31.2"}, "mirror.example:5000/kube-scheduler:v1.31.2"},
	} {
		args := []string{"template", "sn", chartDir, "--namespace", "stickynet-system", "--kube-version", tc.kube}
		for _, s := range tc.sets {
			args = append(args, "--set", s)
		}
		spec := podTemplate(t, objects(t, helm(t, args...))["Deployment/stickynet-scheduler"]).Spec
		if got := spec.Containers[0].Image; got != tc.want {
			t.Errorf("cluster %s, --set %v: scheduler image %q; want %q", tc.kube, tc.sets, got, tc.want)
		}
	}
	refused(t, []string{"extender.scheduler.image=mirror.example/kube-scheduler:v1.31.2", "extender.scheduler.tag=v1.31.9"}, "extender.scheduler.tag", `"v1.31.9"`)
}

// TestWebhookPDB: a PodDisruptionBudget (minAvailable 1) only with more
// than one webhook (or extender) replica; with one it would block every
// drain of its node.
func TestWebhookPDB(t *testing.T) {
	testenv.Integration(t)
	for _, part := range []string{"webhook", "extender"} {
		key := "PodDisruptionBudget/stickynet-" + part
		if _, ok := render(t, part+".replicas=1")[key]; ok {
			t.Errorf("%s.replicas=1 renders a PodDisruptionBudget; with minAvailable 1 it blocks draining the %s's node", part, part)
		}
		pdb := &policyv1.PodDisruptionBudget{}
		if err := yaml.Unmarshal(render(t)[key], pdb); err != nil {
			t.Fatal(err)
		}
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
			t.Errorf("with 2 %s replicas (the default) the PodDisruptionBudget has minAvailable %v; want 1", part, pdb.Spec.MinAvailable)
		}
		checkUnhealthyEvictable(t, key, pdb)
	}
}

// checkUnhealthyEvictable: a replica that is not ready may be evicted. With
// the default policy a drain during an etcd outage, when no webhook replica
// is ready, waited for a healthy one that could not come.
func checkUnhealthyEvictable(t *testing.T, key string, pdb *policyv1.PodDisruptionBudget) {
	t.Helper()
	if p := pdb.Spec.UnhealthyPodEvictionPolicy; p == nil || *p != policyv1.AlwaysAllow {
		t.Errorf("%s: unhealthyPodEvictionPolicy %v; want AlwaysAllow", key, p)
	}
}

// TestEtcdPDB: with more than one bundled etcd member a PodDisruptionBudget
// keeps a quorum (2 of 3, 3 of 5); with one, none (it would block every
// drain of its node).
func TestEtcdPDB(t *testing.T) {
	testenv.Integration(t)
	if _, ok := render(t, "etcd.bundled.replicas=1")["PodDisruptionBudget/stickynet-etcd"]; ok {
		t.Error("etcd.bundled.replicas=1 renders a PodDisruptionBudget; it would block every drain of the member's node")
	}
	for n, quorum := range map[string]int{"3": 2, "5": 3} {
		pdb := &policyv1.PodDisruptionBudget{}
		if err := yaml.Unmarshal(render(t, "etcd.bundled.replicas="+n)["PodDisruptionBudget/stickynet-etcd"], pdb); err != nil {
			t.Fatal(err)
		}
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != quorum || pdb.Spec.Selector == nil ||
			pdb.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "stickynet-etcd" {
			t.Errorf("with %s members the PodDisruptionBudget has minAvailable %v, selector %v; want %d and the etcd pods", n, pdb.Spec.MinAvailable, pdb.Spec.Selector, quorum)
		}
		checkUnhealthyEvictable(t, "PodDisruptionBudget/stickynet-etcd", pdb)
	}
}

// TestNodeAgentProbes: the node agent's readiness probe asks /readyz and
// its liveness probe /livez on its metrics port, the latter with a timeout
// above the agent's own wait for its lock (5 s), so that a slow answer is
// its 503, not the probe's timeout; without a metrics port there are none.
func TestNodeAgentProbes(t *testing.T) {
	testenv.Integration(t)
	c := podTemplate(t, render(t)["DaemonSet/stickynet-nodeagent"]).Spec.Containers[0]
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "metrics" {
		t.Errorf("node agent readinessProbe %+v; want GET /readyz on the metrics port", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/livez" || p.HTTPGet.Port.String() != "metrics" || p.TimeoutSeconds <= 5 {
		t.Errorf("node agent livenessProbe %+v; want GET /livez on the metrics port with a timeout above 5 s", p)
	}
	if c := podTemplate(t, render(t, "nodeAgent.metricsPort=0")["DaemonSet/stickynet-nodeagent"]).Spec.Containers[0]; c.ReadinessProbe != nil || c.LivenessProbe != nil {
		t.Errorf("nodeAgent.metricsPort=0 renders readinessProbe %+v, livenessProbe %+v; want none", c.ReadinessProbe, c.LivenessProbe)
	}
}

// TestUsers: the webhook and extender run as 65532 whatever user the image
// declares, the privileged node agent as root.
func TestUsers(t *testing.T) {
	testenv.Integration(t)
	objs := render(t)
	for key, uid := range map[string]int64{"Deployment/stickynet-webhook": 65532, "Deployment/stickynet-extender": 65532, "DaemonSet/stickynet-nodeagent": 0} {
		sc := podTemplate(t, objs[key]).Spec.Containers[0].SecurityContext
		if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != uid {
			t.Errorf("%s securityContext %+v; want runAsUser %d", key, sc, uid)
		}
	}
	// Every pod but the node agent's (privileged) under the runtime's
	// default seccomp profile; the scheduler not as root either.
	for _, key := range []string{"Deployment/stickynet-webhook", "Deployment/stickynet-extender", "Deployment/stickynet-scheduler", "StatefulSet/stickynet-etcd"} {
		if sc := podTemplate(t, objs[key]).Spec.SecurityContext; sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s pod securityContext %+v; want seccompProfile RuntimeDefault", key, sc)
		}
	}
	if sc := podTemplate(t, objs["Deployment/stickynet-scheduler"]).Spec.Containers[0].SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("scheduler securityContext %+v; want runAsNonRoot, user 65532", sc)
	}
	if etcd := podTemplate(t, objs["StatefulSet/stickynet-etcd"]).Spec; etcd.AutomountServiceAccountToken == nil || *etcd.AutomountServiceAccountToken {
		t.Error("etcd pods mount a service account token; want none")
	}
}

// TestEtcdNetworkPolicy: with the bundled etcd, a NetworkPolicy selects the
// etcd pods and lets in, on the client port, only the webhook's pods and, on
// both ports, the members themselves (selectors checked against the pod
// templates the chart renders); none without the bundled etcd or when
// turned off.
func TestEtcdNetworkPolicy(t *testing.T) {
	testenv.Integration(t)
	objs := render(t)
	np := &networkingv1.NetworkPolicy{}
	if err := yaml.Unmarshal(objs["NetworkPolicy/stickynet-etcd"], np); err != nil || np.Name == "" {
		t.Fatalf("no NetworkPolicy stickynet-etcd with the bundled etcd (%v)", err)
	}
	labels := func(key string) klabels.Set { return podTemplate(t, objs[key]).Labels }
	etcdPods, webhookPods := labels("StatefulSet/stickynet-etcd"), labels("Deployment/stickynet-webhook")
	matches := func(sel *metav1.LabelSelector, l klabels.Set) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			t.Fatal(err)
		}
		return s.Matches(l)
	}
	if !matches(&np.Spec.PodSelector, etcdPods) || matches(&np.Spec.PodSelector, webhookPods) {
		t.Errorf("the policy's podSelector %v does not select exactly the etcd pods", np.Spec.PodSelector)
	}
	// allowed reports whether pods with labels l may reach port on etcd.
	allowed := func(l klabels.Set, port int) bool {
		for _, r := range np.Spec.Ingress {
			from := slices.ContainsFunc(r.From, func(p networkingv1.NetworkPolicyPeer) bool {
				return p.PodSelector != nil && p.NamespaceSelector == nil && p.IPBlock == nil && matches(p.PodSelector, l)
			})
			to := slices.ContainsFunc(r.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port != nil && p.Port.IntValue() == port })
			if from && to {
				return true
			}
		}
		return false
	}
	other := klabels.Set{"app.kubernetes.io/name": "stickynet-extender", "app.kubernetes.io/instance": "sn"}
	for _, c := range []struct {
		who  string
		l    klabels.Set
		port int
		want bool
	}{
		{"the webhook", webhookPods, 2379, true},
		{"the webhook", webhookPods, 2380, false},
		{"a member", etcdPods, 2379, true},
		{"a member", etcdPods, 2380, true},
		{"the extender", other, 2379, false},
	} {
		if got := allowed(c.l, c.port); got != c.want {
			t.Errorf("%s reaches etcd's port %d: %t, want %t (ingress %+v)", c.who, c.port, got, c.want, np.Spec.Ingress)
		}
	}
	// From anywhere, etcd's metrics port only.
	var open []int
	for _, r := range np.Spec.Ingress {
		if len(r.From) == 0 {
			for _, p := range r.Ports {
				open = append(open, p.Port.IntValue())
			}
		}
	}
	if !slices.Equal(open, []int{2381}) {
		t.Errorf("ports open to every source %v; want etcd's metrics port 2381 only", open)
	}
	if c := podTemplate(t, objs["StatefulSet/stickynet-etcd"]).Spec.Containers[0]; !slices.Contains(c.Command, "--listen-metrics-urls=http://0.0.0.0:2381") {
		t.Errorf("etcd command %v does not serve its metrics on 2381", c.Command)
	}
	for _, set := range []string{"etcd.bundled.networkPolicy=false", "etcd.endpoints={https://etcd.example:2379}"} {
		if _, ok := render(t, set)["NetworkPolicy/stickynet-etcd"]; ok {
			t.Errorf("with %s the chart renders NetworkPolicy stickynet-etcd", set)
		}
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// TestSchedulerConfigLoads: the stickynet-scheduler configuration the chart
// renders, by default and with extender.vfResources, is one the real
// kube-scheduler decodes strictly and builds its profile from
// (--write-config-to, which stops before connecting anywhere); with
// vfResources the profile spreads over them and the extender's own VF
// ranking is off; vfResources with vfPlacement=pack is refused by name.
func TestSchedulerConfigLoads(t *testing.T) {
	testenv.Integration(t)
	scheduler := testenv.NeedTool(t, "kube", "kube-scheduler")
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: unused}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	// kube-scheduler reads the extender's CA when it builds the extenders.
	caPEM, _, err := certutil.GenerateSelfSignedCertKey("stickynet-extender", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, set, placement string
		resources            []string
	}{
		{"defaults", "", "spread", nil},
		{"vfResources", "extender.vfResources={stickynet.io/sriov-fast,stickynet.io/sriov-slow}", "none", []string{"stickynet.io/sriov-fast", "stickynet.io/sriov-slow"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "sn", chartDir, "--namespace", "stickynet-system"}
			if tc.set != "" {
				args = append(args, "--set", tc.set)
			}
			objs := objects(t, helm(t, args...))
			cm := &corev1.ConfigMap{}
			if err := yaml.Unmarshal(objs["ConfigMap/stickynet-scheduler-config"], cm); err != nil {
				t.Fatal(err)
			}
			cfg := map[string]any{}
			if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
				t.Fatal(err)
			}
			// Outside a cluster: a kubeconfig instead of the in-cluster one,
			// and the extender's CA where the test put it.
			cfg["clientConnection"] = map[string]any{"kubeconfig": kubeconfig}
			extenders, _ := cfg["extenders"].([]any)
			if len(extenders) != 1 {
				t.Fatalf("the chart's scheduler configuration has %d extenders; want 1", len(extenders))
			}
			ext, _ := extenders[0].(map[string]any)
			for key, verb := range map[string]string{"filterVerb": server.FilterVerb, "prioritizeVerb": server.PrioritizeVerb, "preemptVerb": server.PreemptVerb} {
				if ext[key] != verb {
					t.Errorf("the chart's extender has %s %v; the extender answers %q", key, ext[key], verb)
				}
			}
			ext["tlsConfig"] = map[string]any{"caFile": caFile}
			in, err := yaml.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cfgPath, outPath := filepath.Join(dir, tc.name+".yaml"), filepath.Join(dir, tc.name+"-out.yaml")
			if err := os.WriteFile(cfgPath, in, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if out, err := exec.CommandContext(ctx, scheduler, "--config="+cfgPath, "--write-config-to="+outPath).CombinedOutput(); err != nil {
				t.Fatalf("kube-scheduler refuses the chart's configuration: %v\n%s\n%s", err, lastLines(out, 5), in)
			}
			written, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatal(err)
			}
			loaded := &configv1.KubeSchedulerConfiguration{}
			if err := yaml.Unmarshal(written, loaded); err != nil {
				t.Fatal(err)
			}
			var scored []string
			var preemptPct int32
			for _, p := range loaded.Profiles {
				if ptr.Deref(p.SchedulerName, "") != "stickynet-scheduler" {
					continue
				}
				for _, pc := range p.PluginConfig {
					if pre := (&configv1.DefaultPreemptionArgs{}); pc.Name == "DefaultPreemption" && yaml.Unmarshal(pc.Args.Raw, pre) == nil {
						preemptPct = ptr.Deref(pre.MinCandidateNodesPercentage, 0)
					}
					args := &configv1.NodeResourcesFitArgs{}
					if pc.Name != "NodeResourcesFit" || yaml.Unmarshal(pc.Args.Raw, args) != nil || args.ScoringStrategy == nil {
						continue
					}
					for _, r := range args.ScoringStrategy.Resources {
						if strings.HasPrefix(r.Name, "stickynet.io/") {
							scored = append(scored, r.Name)
						}
					}
				}
			}
			if !slices.Equal(scored, tc.resources) {
				t.Errorf("kube-scheduler's stickynet-scheduler profile scores the VF resources %v; want %v", scored, tc.resources)
			}
			// Preemption tries every node: the extender drops those the
			// pod's pool or VF cannot work on after the scheduler's sample.
			if preemptPct != 100 {
				t.Errorf("kube-scheduler's stickynet-scheduler profile preempts among %d%% of the nodes; want 100", preemptPct)
			}
			dep := &appsv1.Deployment{}
			if err := yaml.Unmarshal(objs["Deployment/stickynet-extender"], dep); err != nil {
				t.Fatal(err)
			}
			if want := "-vf-placement=" + tc.placement; !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, want) {
				t.Errorf("extender args %v lack %s", dep.Spec.Template.Spec.Containers[0].Args, want)
			}
		})
	}

	t.Run("vfResourcesWithPack", func(t *testing.T) {
		_, stderr, err := testenv.Helm(t, "template", "sn", chartDir, "--namespace", "stickynet-system",
			"--set", "extender.vfResources={stickynet.io/sriov-fast}", "--set", "extender.vfPlacement=pack")
		if err == nil || !strings.Contains(stderr, `extender.vfResources`) || !strings.Contains(stderr, `"pack"`) {
			t.Errorf("helm template with vfResources and vfPlacement=pack: err %v; want a refusal naming both:\n%s", err, stderr)
		}
	})
}
