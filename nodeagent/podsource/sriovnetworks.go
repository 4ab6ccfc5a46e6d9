package podsource

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/stickynet/stickynet/api/v1alpha1"
)

// SriovNetworkResource is the SriovNetwork custom resource.
var SriovNetworkResource = schema.GroupVersionResource{Group: "stickynet.io", Version: "v1alpha1", Resource: "sriovnetworks"}

// SriovNetworkInformer watches the cluster's SriovNetworks.
type SriovNetworkInformer struct {
	client dynamic.Interface
	inf    cache.SharedIndexInformer
}

// NewSriovNetworkInformer returns a source of SriovNetworks.
func NewSriovNetworkInformer(client dynamic.Interface) *SriovNetworkInformer {
	return &SriovNetworkInformer{client: client}
}

// Start runs the informer until ctx ends without waiting for it to sync (the
// custom resource may not be installed yet); onChange sees every change.
func (s *SriovNetworkInformer) Start(ctx context.Context, onChange func()) error {
	f := dynamicinformer.NewDynamicSharedInformerFactory(s.client, 0)
	s.inf = f.ForResource(SriovNetworkResource).Informer()
	notify := func(any) {
		if onChange != nil {
			onChange()
		}
	}
	if _, err := s.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, UpdateFunc: func(_, o any) { notify(o) }, DeleteFunc: notify,
	}); err != nil {
		return fmt.Errorf("SriovNetwork informer handler: %w", err)
	}
	f.Start(ctx.Done())
	// Once listed, even with none there (no event then): a caller that
	// waits for Synced learns it.
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), s.inf.HasSynced) {
			notify(nil)
		}
	}()
	return nil
}

// Synced reports whether the informer has listed the SriovNetworks once.
func (s *SriovNetworkInformer) Synced() bool { return s.inf != nil && s.inf.HasSynced() }

// Get returns the SriovNetwork name.
func (s *SriovNetworkInformer) Get(name string) (*v1alpha1.SriovNetwork, bool) {
	obj, ok, err := s.inf.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil, false
	}
	n, err := toSriovNetwork(obj)
	return n, err == nil
}

// List returns every SriovNetwork.
func (s *SriovNetworkInformer) List() []*v1alpha1.SriovNetwork {
	var out []*v1alpha1.SriovNetwork
	for _, obj := range s.inf.GetStore().List() {
		if n, err := toSriovNetwork(obj); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func toSriovNetwork(obj any) (*v1alpha1.SriovNetwork, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected %T", obj)
	}
	var n v1alpha1.SriovNetwork
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &n); err != nil {
		return nil, fmt.Errorf("decode SriovNetwork %s: %w", u.GetName(), err)
	}
	return &n, nil
}

// StaticSriovNetworks is a fixed set of SriovNetworks (tests, simulations).
type StaticSriovNetworks struct {
	mu   sync.Mutex
	nets map[string]*v1alpha1.SriovNetwork
}

// NewStaticSriovNetworks returns a source holding nets.
func NewStaticSriovNetworks(nets ...*v1alpha1.SriovNetwork) *StaticSriovNetworks {
	s := &StaticSriovNetworks{nets: map[string]*v1alpha1.SriovNetwork{}}
	for _, n := range nets {
		s.nets[n.Name] = n.DeepCopy()
	}
	return s
}

// Start does nothing: a static source is synced from the start.
func (*StaticSriovNetworks) Start(context.Context, func()) error { return nil }

// Synced is always true.
func (*StaticSriovNetworks) Synced() bool { return true }

// Get returns a copy of the SriovNetwork name.
func (s *StaticSriovNetworks) Get(name string) (*v1alpha1.SriovNetwork, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nets[name]
	if !ok {
		return nil, false
	}
	return n.DeepCopy(), true
}

// List returns copies of every SriovNetwork.
func (s *StaticSriovNetworks) List() []*v1alpha1.SriovNetwork {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*v1alpha1.SriovNetwork
	for _, n := range s.nets {
		out = append(out, n.DeepCopy())
	}
	return out
}
