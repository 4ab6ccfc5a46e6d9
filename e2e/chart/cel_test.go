package chart_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/google/cel-go/cel"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apiserver/pkg/cel/environment"
	"sigs.k8s.io/yaml"
)

// The CRDs' validation rules compile on the oldest Kubernetes the chart
// says it supports. An API server takes a new CRD's rules in the CEL
// environment of the release before its own (its compatibility version), so
// a function added in 1.N is refused in a new CRD until 1.N+1: the IPPool
// rules' isCIDR and ip() came in 1.30, and a 1.30 API server refused the
// IPPool CRD while the chart said 1.30 was enough.
func TestCRDRulesCompileOnOldestKubernetes(t *testing.T) {
	chart, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^kubeVersion: ">=1\.(\d+)\.0-0"$`).FindSubmatch(chart)
	if m == nil {
		t.Fatalf("Chart.yaml: no kubeVersion of the form \">=1.N.0-0\"")
	}
	oldest, _ := strconv.Atoi(string(m[1]))
	compat := version.MajorMinor(1, uint(oldest-1))
	env, err := environment.MustBaseEnvSet(compat).Env(environment.NewExpressions)
	if err != nil {
		t.Fatal(err)
	}
	if env, err = env.Extend(cel.Variable("self", cel.DynType), cel.Variable("oldSelf", cel.DynType)); err != nil {
		t.Fatal(err)
	}
	crds, err := filepath.Glob(filepath.Join(chartDir, "crds", "*.yaml"))
	if err != nil || len(crds) == 0 {
		t.Fatalf("no CRDs in %s/crds: %v", chartDir, err)
	}
	n := 0
	for _, f := range crds {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var walk func(x any)
		walk = func(x any) {
			switch v := x.(type) {
			case map[string]any:
				for _, k := range []string{"rule", "messageExpression"} {
					if expr, ok := v[k].(string); ok {
						n++
						if _, iss := env.Compile(expr); iss.Err() != nil {
							t.Errorf("%s: %s %q does not compile on Kubernetes 1.%d (Chart.yaml's oldest; CEL environment %s): %v",
								filepath.Base(f), k, expr, oldest, compat, iss.Err())
						}
					}
				}
				for _, c := range v {
					walk(c)
				}
			case []any:
				for _, c := range v {
					walk(c)
				}
			}
		}
		walk(doc)
	}
	if n == 0 {
		t.Fatal("no validation rules found in the CRDs")
	}
}
