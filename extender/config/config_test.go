package config

import (
	"bytes"
	"reflect"
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	configv1 "k8s.io/kube-scheduler/config/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/stickynet/stickynet/extender/server"
)

func decodeConfig(t *testing.T, b []byte) configv1.KubeSchedulerConfiguration {
	t.Helper()
	var cfg configv1.KubeSchedulerConfiguration
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		t.Fatalf("not a KubeSchedulerConfiguration (strict): %v", err)
	}
	return cfg
}

func TestSchedulerConfig(t *testing.T) {
	cfg := decodeConfig(t, SchedulerConfig)
	if cfg.APIVersion != "kubescheduler.config.k8s.io/v1" || cfg.Kind != "KubeSchedulerConfiguration" {
		t.Errorf("apiVersion/kind %s/%s", cfg.APIVersion, cfg.Kind)
	}
	if len(cfg.Profiles) != 1 || cfg.Profiles[0].SchedulerName == nil || *cfg.Profiles[0].SchedulerName != SchedulerName {
		t.Fatalf("profiles %+v, want one named %s", cfg.Profiles, SchedulerName)
	}
	if p := cfg.Profiles[0].PercentageOfNodesToScore; p == nil || *p != 100 {
		t.Errorf("percentageOfNodesToScore %v, want 100", p)
	}
	if pct := preemptionPercentage(t, cfg.Profiles[0]); pct != 100 {
		t.Errorf("DefaultPreemption minCandidateNodesPercentage %d, want 100: a sample of a large cluster may hold no node the pod's pool or VF works on", pct)
	}
	if len(cfg.Extenders) != 1 {
		t.Fatalf("%d extenders, want 1", len(cfg.Extenders))
	}
	e := cfg.Extenders[0]
	if e.FilterVerb != server.FilterVerb || e.PrioritizeVerb != server.PrioritizeVerb || e.PreemptVerb != server.PreemptVerb {
		t.Errorf("verbs %q/%q/%q, the server answers %q/%q/%q", e.FilterVerb, e.PrioritizeVerb, e.PreemptVerb,
			server.FilterVerb, server.PrioritizeVerb, server.PreemptVerb)
	}
	if !e.NodeCacheCapable || e.Ignorable || e.BindVerb != "" || len(e.ManagedResources) != 0 {
		t.Errorf("extender %+v: want nodeCacheCapable, not ignorable, no bind verb, no managed resources", e)
	}
	if !e.EnableHTTPS || e.TLSConfig == nil || e.TLSConfig.CAFile == "" || e.TLSConfig.Insecure {
		t.Errorf("extender TLS %+v: want HTTPS verified against a CA", e.TLSConfig)
	}
	if e.Weight <= 0 {
		t.Errorf("weight %d: must be positive", e.Weight)
	}
}

func TestSnippetMatchesConfig(t *testing.T) {
	var snippet struct {
		Extenders []configv1.Extender `json:"extenders"`
	}
	if err := yaml.UnmarshalStrict(ExtenderSnippet, &snippet); err != nil {
		t.Fatalf("snippet: %v", err)
	}
	cfg := decodeConfig(t, SchedulerConfig)
	if !reflect.DeepEqual(snippet.Extenders, cfg.Extenders) {
		t.Errorf("snippet's extender %+v differs from scheduler-config.yaml's %+v", snippet.Extenders, cfg.Extenders)
	}
}

func TestAt(t *testing.T) {
	shipped := decodeConfig(t, SchedulerConfig)
	for _, tc := range []struct {
		name, url, ca string
		https         bool
		wantErr       bool
	}{
		{name: "plain HTTP", url: "http://127.0.0.1:18888"},
		{name: "HTTPS with a CA", url: "https://127.0.0.1:18888", ca: "/tmp/ca.crt", https: true},
		{name: "HTTPS without a CA", url: "https://127.0.0.1:18888", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := At(tc.url, tc.ca)
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := decodeConfig(t, b)
			e := got.Extenders[0]
			if e.URLPrefix != tc.url || e.EnableHTTPS != tc.https || (tc.https && (e.TLSConfig == nil || e.TLSConfig.CAFile != tc.ca)) || (!tc.https && e.TLSConfig != nil) {
				t.Errorf("extender %+v", e)
			}
			e.URLPrefix, e.EnableHTTPS, e.TLSConfig = shipped.Extenders[0].URLPrefix, true, shipped.Extenders[0].TLSConfig
			if !reflect.DeepEqual(e, shipped.Extenders[0]) || !reflect.DeepEqual(got.Profiles, shipped.Profiles) {
				t.Errorf("At changed more than the URL and TLS")
			}
		})
	}
}

func TestRBAC(t *testing.T) {
	docs := bytes.Split(RBAC, []byte("\n---\n"))
	if len(docs) != 2 {
		t.Fatalf("%d documents, want ClusterRole and ClusterRoleBinding", len(docs))
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(docs[0], &role); err != nil || role.Kind != "ClusterRole" {
		t.Fatalf("ClusterRole: %v (%s)", err, role.Kind)
	}
	var binding rbacv1.ClusterRoleBinding
	if err := yaml.UnmarshalStrict(docs[1], &binding); err != nil || binding.RoleRef.Name != role.Name {
		t.Fatalf("ClusterRoleBinding: %v (%+v)", err, binding.RoleRef)
	}
	for _, want := range []struct{ group, resource string }{{"", "nodes"}, {"", "pods"}, {"stickynet.io", "ippools"}, {"stickynet.io", "sriovnetworks"}} {
		ok := false
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, want.group) && slices.Contains(r.Resources, want.resource) &&
				slices.Contains(r.Verbs, "list") && slices.Contains(r.Verbs, "watch") {
				ok = true
			}
			if slices.ContainsFunc(r.Verbs, func(v string) bool { return v != "get" && v != "list" && v != "watch" }) {
				t.Errorf("rule %+v grants more than reading", r)
			}
		}
		if !ok {
			t.Errorf("no list/watch on %s %q", want.resource, want.group)
		}
	}
}

// preemptionPercentage is the profile's DefaultPreemption
// minCandidateNodesPercentage (0 when not set).
func preemptionPercentage(t *testing.T, p configv1.KubeSchedulerProfile) int32 {
	t.Helper()
	for _, pc := range p.PluginConfig {
		if pc.Name != "DefaultPreemption" {
			continue
		}
		args := &configv1.DefaultPreemptionArgs{}
		if err := yaml.Unmarshal(pc.Args.Raw, args); err != nil {
			t.Fatal(err)
		}
		return ptr.Deref(args.MinCandidateNodesPercentage, 0)
	}
	return 0
}
