package podsource_test

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/podsource"
)

func pod(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Annotations: map[string]string{"k": "v1"}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
}

// The informer sees only its node's pods, and every later change to them.
func TestInformerAgainstAPIServer(t *testing.T) {
	api := agenttest.StartAPIServer(t)
	client := kubernetes.NewForConfigOrDie(api.Config)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pods := client.CoreV1().Pods("default")
	for _, p := range []*corev1.Pod{pod("mine", "node-1"), pod("other", "node-2")} {
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]string{}
	src := podsource.NewInformer(client, "node-1")
	if err := src.Start(ctx, func(p *corev1.Pod) {
		mu.Lock()
		seen[p.Name] = p.Annotations["k"]
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if _, ok := src.Get("default", "mine"); !ok {
		t.Error("synced informer lacks its node's pod")
	}
	if _, ok := src.Get("default", "other"); ok {
		t.Error("informer holds another node's pod")
	}
	if l := src.List(); len(l) != 1 || l[0].ManagedFields != nil {
		t.Errorf("List = %d pods (managed fields kept: %v)", len(l), len(l) == 1 && l[0].ManagedFields != nil)
	}
	p, _ := pods.Get(ctx, "mine", metav1.GetOptions{})
	p.Annotations["k"] = "v2"
	if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		v := seen["mine"]
		_, other := seen["other"]
		mu.Unlock()
		if other {
			t.Fatal("onChange saw another node's pod")
		}
		if v == "v2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("onChange did not see the update (last %q)", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, _ := src.Get("default", "mine"); got.Annotations["k"] != "v2" {
		t.Errorf("Get after update: %v", got.Annotations)
	}
}

func TestStatic(t *testing.T) {
	var got []string
	s := podsource.NewStatic(pod("a", "n"))
	if err := s.Start(context.Background(), func(p *corev1.Pod) { got = append(got, p.Name) }); err != nil {
		t.Fatal(err)
	}
	s.Set(pod("b", "n"))
	s.Delete("default", "a")
	s.Delete("default", "missing")
	if len(got) != 2 || got[0] != "b" || got[1] != "a" {
		t.Errorf("onChange saw %v", got)
	}
	if _, ok := s.Get("default", "a"); ok || len(s.List()) != 1 {
		t.Errorf("after delete: %v", s.List())
	}
	p, _ := s.Get("default", "b")
	p.Annotations["k"] = "changed"
	if q, _ := s.Get("default", "b"); q.Annotations["k"] != "v1" {
		t.Error("Get returns a shared object")
	}
}
