// Package podsource gives the node agent the Kubernetes objects it reads:
// the pods of its node, from a client-go informer limited to the node (field
// selector spec.nodeName), and the SriovNetworks, from a dynamic informer; or
// either from a static set that tests and simulations fill by hand.
package podsource

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Informer watches the pods bound to one node.
type Informer struct {
	client   kubernetes.Interface
	nodeName string
	lister   listersv1.PodLister
}

// NewInformer returns a source of the pods on nodeName.
func NewInformer(client kubernetes.Interface, nodeName string) *Informer {
	return &Informer{client: client, nodeName: nodeName}
}

// Start runs the informer until ctx ends and returns once its cache is
// synced; onChange then sees every added, updated and deleted pod.
func (i *Informer) Start(ctx context.Context, onChange func(*corev1.Pod)) error {
	factory := informers.NewSharedInformerFactoryWithOptions(i.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", i.nodeName).String()
		}))
	pods := factory.Core().V1().Pods()
	inf := pods.Informer()
	// The agent reads annotations, addresses and status; managed fields are
	// the bulk of a pod object and of no use here.
	if err := inf.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			p.ManagedFields = nil
		}
		return obj, nil
	}); err != nil {
		return fmt.Errorf("pod informer transform: %w", err)
	}
	notify := func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok && onChange != nil {
			onChange(p)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    notify,
		UpdateFunc: func(_, obj any) { notify(obj) },
		DeleteFunc: notify,
	}); err != nil {
		return fmt.Errorf("pod informer handler: %w", err)
	}
	i.lister = pods.Lister()
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer of node %s: %w", typ, i.nodeName, context.Cause(ctx))
		}
	}
	return nil
}

// Get returns the pod namespace/name from the informer's cache.
func (i *Informer) Get(namespace, name string) (*corev1.Pod, bool) {
	p, err := i.lister.Pods(namespace).Get(name)
	if err != nil {
		return nil, false
	}
	return p, true
}

// List returns the cached pods of the node.
func (i *Informer) List() []*corev1.Pod {
	ps, _ := i.lister.List(labelsEverything)
	return ps
}

// Static is a pod source filled by hand: tests and simulations use it in
// place of an API server.
type Static struct {
	mu       sync.Mutex
	pods     map[string]*corev1.Pod
	onChange func(*corev1.Pod)
}

// NewStatic returns a source holding pods.
func NewStatic(pods ...*corev1.Pod) *Static {
	s := &Static{pods: map[string]*corev1.Pod{}}
	for _, p := range pods {
		s.pods[p.Namespace+"/"+p.Name] = p.DeepCopy()
	}
	return s
}

// Start records onChange; the static source is synced from the start.
func (s *Static) Start(_ context.Context, onChange func(*corev1.Pod)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = onChange
	return nil
}

// Set adds or replaces a pod and notifies the subscriber.
func (s *Static) Set(p *corev1.Pod) {
	p = p.DeepCopy()
	s.mu.Lock()
	s.pods[p.Namespace+"/"+p.Name] = p
	fn := s.onChange
	s.mu.Unlock()
	if fn != nil {
		fn(p)
	}
}

// Delete removes a pod and notifies the subscriber.
func (s *Static) Delete(namespace, name string) {
	s.mu.Lock()
	p, ok := s.pods[namespace+"/"+name]
	delete(s.pods, namespace+"/"+name)
	fn := s.onChange
	s.mu.Unlock()
	if ok && fn != nil {
		fn(p)
	}
}

// Get returns a copy of the pod namespace/name.
func (s *Static) Get(namespace, name string) (*corev1.Pod, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pods[namespace+"/"+name]
	if !ok {
		return nil, false
	}
	return p.DeepCopy(), true
}

// List returns copies of all pods.
func (s *Static) List() []*corev1.Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(s.pods))
	for _, p := range s.pods {
		out = append(out, p.DeepCopy())
	}
	return out
}

var labelsEverything = labels.Everything()
