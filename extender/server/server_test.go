package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/extender/score"
	"github.com/stickynet/stickynet/extender/state"
)

const fast = corev1.ResourceName("stickynet.io/sriov-fast")

// testState is the cluster the fixtures are written against:
//
//	n1 rack=1 sriov=yes 2 VFs, 0 used
//	n2 rack=1 sriov=yes 1 VF,  1 used
//	n3 rack=2 sriov=yes 4 VFs, 0 used; statefulset/shop/web/0 last ran here
//	n4 rack=1           4 VFs (outside the network's nodeSelector)
//	n5 rack=1 sriov=yes no VF resource
//
// IPPools rack1 (rack=1) and all; SriovNetwork fast (sriov=yes).
func testState() *state.State {
	s := state.New(state.Options{})
	for _, n := range []struct {
		name   string
		labels map[string]string
		vfs    int64
	}{
		{"n1", map[string]string{"rack": "1", "sriov": "yes"}, 2},
		{"n2", map[string]string{"rack": "1", "sriov": "yes"}, 1},
		{"n3", map[string]string{"rack": "2", "sriov": "yes"}, 4},
		{"n4", map[string]string{"rack": "1"}, 4},
		{"n5", map[string]string{"rack": "1", "sriov": "yes"}, -1},
	} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels}}
		if n.vfs >= 0 {
			node.Status.Allocatable = corev1.ResourceList{fast: *resource.NewQuantity(n.vfs, resource.DecimalSI)}
		}
		s.SetNode(node)
	}
	s.SetPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "holder", UID: "holder", Annotations: map[string]string{"stickynet.io/sriov-network": "fast", "stickynet.io/assigned-pool": "rack1"}},
		Spec:       corev1.PodSpec{NodeName: "n2"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	})
	s.SetPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", UID: "old-web-0", Annotations: map[string]string{"stickynet.io/identity": "statefulset/shop/web/0", "stickynet.io/assigned-pool": "all"}},
		Spec:       corev1.PodSpec{NodeName: "n3"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	})
	s.DeletePod("old-web-0")
	s.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "rack1"}, Spec: v1alpha1.IPPoolSpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "1"}},
	}})
	s.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "all"}})
	s.SetNetwork(&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{
		PFNames: []string{"ens1f0"}, NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"sriov": "yes"}},
	}})
	return s
}

func newTestServer(opts Options) *Server {
	if opts.Score == (score.Options{}) {
		opts.Score = score.Options{PreferLastNode: true, Placement: score.Spread}
	}
	s := New(testState(), opts)
	s.SetReady()
	return s
}

func fixture(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(h http.Handler, path, contentType string, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, body)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestVerbs answers each request fixture and compares the answer, decoded
// by encoding/json into the extender/v1 type as kube-scheduler decodes it,
// with the response fixture.
func TestVerbs(t *testing.T) {
	srv := newTestServer(Options{})
	for _, tc := range []struct {
		name string
		verb string
		into func() any
	}{
		{"filter-plain", FilterVerb, func() any { return new(extenderv1.ExtenderFilterResult) }},
		{"filter-pool", FilterVerb, func() any { return new(extenderv1.ExtenderFilterResult) }},
		{"filter-sriov", FilterVerb, func() any { return new(extenderv1.ExtenderFilterResult) }},
		{"filter-sriov-unrequested", FilterVerb, func() any { return new(extenderv1.ExtenderFilterResult) }},
		{"prioritize-plain", PrioritizeVerb, func() any { return new(extenderv1.HostPriorityList) }},
		{"prioritize-sticky", PrioritizeVerb, func() any { return new(extenderv1.HostPriorityList) }},
		{"prioritize-sriov", PrioritizeVerb, func() any { return new(extenderv1.HostPriorityList) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := post(srv, "/"+tc.verb, "application/json", bytes.NewReader(fixture(t, "requests/"+tc.name+".json")))
			if w.Code != http.StatusOK {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			got, want := tc.into(), tc.into()
			dec := json.NewDecoder(w.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(got); err != nil {
				t.Fatalf("answer does not decode as %T: %v", got, err)
			}
			if err := json.Unmarshal(fixture(t, "responses/"+tc.name+".json"), want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				gb, _ := json.Marshal(got)
				wb, _ := json.Marshal(want)
				t.Errorf("answer\n%s\nwant\n%s", gb, wb)
			}
		})
	}
}

// TestSchedulerEncoding sends what kube-scheduler's HTTPExtender sends:
// json.Marshal of ExtenderArgs with a typed Pod and NodeNames.
func TestSchedulerEncoding(t *testing.T) {
	srv := newTestServer(Options{})
	names := []string{"n1", "n2", "n3", "n4", "n5"}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "web-1", Namespace: "shop",
		Annotations: map[string]string{"stickynet.io/assigned-pool": "rack1"},
	}}
	body, err := json.Marshal(&extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
	if err != nil {
		t.Fatal(err)
	}
	w := post(srv, "/filter", "application/json", bytes.NewReader(body))
	var res extenderv1.ExtenderFilterResult
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Code != http.StatusOK {
		t.Fatalf("status %d, %v: %s", w.Code, err, w.Body)
	}
	if res.NodeNames == nil || len(*res.NodeNames) != 4 || len(res.FailedAndUnresolvableNodes) != 1 {
		t.Errorf("answer %+v", res)
	}
}

// TestPreempt sends what kube-scheduler sends before it evicts pods for a
// pod: the candidate nodes with their victims. Only the nodes where the
// pod's pool and network can work once the victims are gone come back,
// with their victims as sent. Free VFs are counted, the victims' as free,
// for a pod that does not request its VF (the scheduler counts those that
// do, with the victims gone).
func TestPreempt(t *testing.T) {
	srv := newTestServer(Options{})
	meta := func(uid string) *extenderv1.MetaVictims {
		return &extenderv1.MetaVictims{Pods: []*extenderv1.MetaPod{{UID: uid}}, NumPDBViolations: 1}
	}
	all := map[string]*extenderv1.MetaVictims{"n1": meta("v1"), "n2": meta("v2"), "n3": meta("v3"), "n4": meta("v4"), "n5": meta("v5"), "gone": meta("v6")}
	typed := map[string]*extenderv1.Victims{}
	for n, v := range all {
		typed[n] = &extenderv1.Victims{Pods: []*corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "victim", UID: types.UID(v.Pods[0].UID)}}}, NumPDBViolations: 1}
	}
	pod := func(ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Annotations: ann}}
	}
	rack1 := map[string]string{"stickynet.io/assigned-pool": "rack1"}
	sriov := map[string]string{"stickynet.io/assigned-pool": "rack1", "stickynet.io/sriov-network": "fast"}
	requested := pod(sriov)
	requested.Spec.Containers = []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{fast: resource.MustParse("1")}}}}
	holderEvicted := maps.Clone(all)
	holderEvicted["n2"] = meta("holder") // holds n2's one VF
	for _, tc := range []struct {
		name string
		args extenderv1.ExtenderPreemptionArgs
		want []string
	}{
		{"plain pod", extenderv1.ExtenderPreemptionArgs{Pod: pod(nil), NodeNameToMetaVictims: all}, []string{"gone", "n1", "n2", "n3", "n4", "n5"}},
		{"pool", extenderv1.ExtenderPreemptionArgs{Pod: pod(rack1), NodeNameToMetaVictims: all}, []string{"n1", "n2", "n4", "n5"}},
		{"pool, not nodeCacheCapable", extenderv1.ExtenderPreemptionArgs{Pod: pod(rack1), NodeNameToVictims: typed}, []string{"n1", "n2", "n4", "n5"}},
		{"VF requested", extenderv1.ExtenderPreemptionArgs{Pod: requested, NodeNameToMetaVictims: all}, []string{"n1", "n2", "n5"}},
		{"VF not requested", extenderv1.ExtenderPreemptionArgs{Pod: pod(sriov), NodeNameToMetaVictims: all}, []string{"n1"}},
		{"VF not requested, its holder a victim", extenderv1.ExtenderPreemptionArgs{Pod: pod(sriov), NodeNameToMetaVictims: holderEvicted}, []string{"n1", "n2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, err := json.Marshal(&tc.args)
			if err != nil {
				t.Fatal(err)
			}
			w := post(srv, "/"+PreemptVerb, "application/json", bytes.NewReader(body))
			var res extenderv1.ExtenderPreemptionResult
			dec := json.NewDecoder(w.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&res); err != nil || w.Code != http.StatusOK {
				t.Fatalf("status %d, %v: %s", w.Code, err, w.Body)
			}
			var got []string
			sent := tc.args.NodeNameToMetaVictims
			if sent == nil {
				sent = all // typed carries the same UIDs
			}
			for n, v := range res.NodeNameToMetaVictims {
				got = append(got, n)
				if !reflect.DeepEqual(v, sent[n]) {
					t.Errorf("victims of %s: %+v, want %+v as sent", n, v, sent[n])
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("nodes kept %v, want %v", got, tc.want)
			}
		})
	}
	if w := post(srv, "/"+PreemptVerb, "application/json", strings.NewReader(`{"NodeNameToMetaVictims":{}}`)); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `no "Pod"`) {
		t.Errorf("request without a pod: status %d %s", w.Code, w.Body)
	}
}

// TestPodCache checks that a pod decoded for filter is remembered by its
// JSON and given to prioritize without decoding it again, and that a pod
// whose JSON differs in any byte is decoded anew: the same pod moved to
// another pool gets the other pool's answer, and back again the first.
func TestPodCache(t *testing.T) {
	srv := newTestServer(Options{})
	names := []string{"n1", "n2", "n3", "n4", "n5"}
	filter := func(pool string) (passed int, podJSON []byte) {
		t.Helper()
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: "web-1", Namespace: "shop", UID: "u1",
			Annotations: map[string]string{"stickynet.io/assigned-pool": pool},
		}}
		podJSON, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		body, err := json.Marshal(&extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
		if err != nil {
			t.Fatal(err)
		}
		w := post(srv, "/filter", "application/json", bytes.NewReader(body))
		var res extenderv1.ExtenderFilterResult
		if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Code != http.StatusOK || res.NodeNames == nil {
			t.Fatalf("status %d, %v: %s", w.Code, err, w.Body)
		}
		return len(*res.NodeNames), podJSON
	}
	for _, tc := range []struct {
		pool   string
		passed int
	}{{"rack1", 4}, {"all", 5}, {"rack1", 4}} {
		passed, podJSON := filter(tc.pool)
		if passed != tc.passed {
			t.Errorf("pool %s: %d nodes passed, want %d", tc.pool, passed, tc.passed)
		}
		got := srv.pods.get(podJSON)
		if got == nil || got.Annotations["stickynet.io/assigned-pool"] != tc.pool {
			t.Fatalf("pool %s: the cache holds %v for the pod's JSON", tc.pool, got)
		}
		held := 0
		for _, e := range srv.pods.entries {
			if e.pod != nil && bytes.Equal(e.raw, podJSON) {
				held++
			}
		}
		if held != 1 {
			t.Errorf("pool %s: the cache holds the pod's JSON %d times; want once (decoded again instead of taken from the cache)", tc.pool, held)
		}
	}

	// It holds the last podCacheSize pods; a nil cache holds none.
	var c podCache
	raw := func(i int) []byte { return []byte(fmt.Sprintf(`{"metadata":{"name":"p%d"}}`, i)) }
	for i := range podCacheSize + 1 {
		c.add(raw(i), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint(i)}})
	}
	if c.get(raw(0)) != nil {
		t.Error("the oldest pod is still held after podCacheSize more")
	}
	for i := 1; i <= podCacheSize; i++ {
		if p := c.get(raw(i)); p == nil || p.Name != fmt.Sprint(i) {
			t.Errorf("pod %d: got %v", i, p)
		}
	}
	var none *podCache
	none.add(raw(1), &corev1.Pod{})
	if none.get(raw(1)) != nil {
		t.Error("a nil cache returned a pod")
	}
}

func TestBadRequests(t *testing.T) {
	srv := newTestServer(Options{MaxRequestBytes: 2048})
	big := bytes.Repeat([]byte(" "), 4096)
	for _, tc := range []struct {
		name        string
		method      string
		path        string
		contentType string
		body        []byte
		chunked     bool // hide the length, so only reading finds the size
		want        int
		wantMsg     string
	}{
		{name: "GET", method: http.MethodGet, path: "/filter", want: http.StatusMethodNotAllowed, wantMsg: "method GET not allowed: extender verbs take POST"},
		{name: "PUT", method: http.MethodPut, path: "/prioritize", contentType: "application/json", body: fixture(t, "requests/filter-plain.json"), want: http.StatusMethodNotAllowed, wantMsg: "method PUT"},
		{name: "text content type", path: "/filter", contentType: "text/plain", body: fixture(t, "requests/filter-plain.json"), want: http.StatusUnsupportedMediaType, wantMsg: `content type "text/plain" not supported: expected application/json`},
		{name: "no content type", path: "/prioritize", body: fixture(t, "requests/filter-plain.json"), want: http.StatusUnsupportedMediaType, wantMsg: "expected application/json"},
		{name: "broken content type", path: "/filter", contentType: "application/json; charset", body: fixture(t, "requests/filter-plain.json"), want: http.StatusUnsupportedMediaType},
		{name: "declared too large", path: "/filter", contentType: "application/json", body: big, want: http.StatusRequestEntityTooLarge, wantMsg: "body of 4096 bytes exceeds the limit of 2048 bytes (a scheduler sends whole Node objects unless the extender's entry in its configuration has nodeCacheCapable: true"},
		{name: "streamed too large", path: "/prioritize", contentType: "application/json", body: big, chunked: true, want: http.StatusRequestEntityTooLarge, wantMsg: "body exceeds the limit of 2048 bytes"},
		{name: "empty body", path: "/filter", contentType: "application/json", want: http.StatusBadRequest, wantMsg: "filter: empty body: expected a JSON ExtenderArgs object"},
		{name: "truncated JSON", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-truncated.json"), want: http.StatusBadRequest, wantMsg: "filter: decode ExtenderArgs"},
		{name: "trailing data", path: "/prioritize", contentType: "application/json", body: fixture(t, "requests/bad-trailing.json"), want: http.StatusBadRequest, wantMsg: "unexpected data after the JSON object"},
		{name: "no Pod", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-no-pod.json"), want: http.StatusBadRequest, wantMsg: `request has no "Pod"`},
		{name: "no NodeNames", path: "/prioritize", contentType: "application/json", body: fixture(t, "requests/bad-no-nodenames.json"), want: http.StatusBadRequest, wantMsg: `request has no "NodeNames"`},
		{name: "NodeNames not an array", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-nodenames-type.json"), want: http.StatusBadRequest, wantMsg: `"NodeNames" must be an array of strings`},
		{name: "node name not a string", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-nodename-number.json"), want: http.StatusBadRequest, wantMsg: "expected a string"},
		{name: "duplicate key", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-duplicate-key.json"), want: http.StatusBadRequest, wantMsg: `key "Pod" given twice`},
		{name: "Pod of the wrong shape", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-pod-type.json"), want: http.StatusBadRequest, wantMsg: "decode Pod"},
		{name: "not an object", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-array.json"), want: http.StatusBadRequest, wantMsg: "expected a JSON ExtenderArgs object"},
		{name: "whole nodes", path: "/filter", contentType: "application/json", body: fixture(t, "requests/bad-nodes-not-cache-capable.json"), want: http.StatusBadRequest, wantMsg: "set nodeCacheCapable: true"},
		{name: "unknown verb", path: "/bind", contentType: "application/json", body: fixture(t, "requests/filter-plain.json"), want: http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				body = iotest.OneByteReader(bytes.NewReader(tc.body))
			}
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			req := httptest.NewRequest(method, tc.path, body)
			if tc.chunked {
				req.ContentLength = -1
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, req)
			code, msg := refusal(t, tc.path, w)
			if code != tc.want {
				t.Fatalf("status %d, want %d: %s", code, tc.want, w.Body)
			}
			if tc.wantMsg != "" && !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", msg, tc.wantMsg)
			}
			if tc.want == http.StatusMethodNotAllowed && w.Header().Get("Allow") != http.MethodPost {
				t.Errorf("Allow header %q", w.Header().Get("Allow"))
			}
		})
	}
}

// refusal returns the status of an answer and its message. A filter that a
// scheduler sent (POST, JSON) is refused with 200 and the message in the
// result's Error, which kube-scheduler puts in the pod's event (of another
// status it keeps only the code): that counts here as 400 for a request
// that does not decode, 413 for one too large and 503 before the caches
// sync, the status the metrics count it under.
func refusal(t *testing.T, path string, w *httptest.ResponseRecorder) (int, string) {
	t.Helper()
	if path != "/"+FilterVerb || w.Code != http.StatusOK {
		switch w.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable:
			if path == "/"+FilterVerb {
				t.Errorf("filter refused with status %d (a scheduler shows only the code); want 200 with the reason as the result's Error: %s", w.Code, w.Body)
			}
		}
		return w.Code, w.Body.String()
	}
	var res extenderv1.ExtenderFilterResult
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
		t.Fatalf("filter answer is not an ExtenderFilterResult: %v: %s", err, w.Body)
	}
	switch {
	case res.Error == "":
		return w.Code, ""
	case strings.Contains(res.Error, "exceeds the limit"):
		return http.StatusRequestEntityTooLarge, res.Error
	case strings.Contains(res.Error, "not synced"):
		return http.StatusServiceUnavailable, res.Error
	}
	return http.StatusBadRequest, res.Error
}

// A refusal is logged at the default verbosity, once a minute for each verb
// and status: kube-scheduler drops the body of an answer other than 200, and
// its event says only the status code (a filter's refusal now reaches the
// pod's event through the result's Error, but prioritize and preempt have
// none, and an operator reads the log). Before, refusals were logged at
// verbosity 2 only, and the chart runs the extender at 0: a scheduler
// configuration without nodeCacheCapable failed every pod with "code 400"
// and an empty log.
func TestRefusalsLogged(t *testing.T) {
	srv := newTestServer(Options{})
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(0), ktesting.BufferLogs(true)))
	for range 3 {
		req := httptest.NewRequest(http.MethodPost, "/filter", bytes.NewReader(fixture(t, "requests/bad-nodes-not-cache-capable.json")))
		req.Header.Set("Content-Type", "application/json")
		req = req.WithContext(klog.NewContext(req.Context(), logger))
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if code, msg := refusal(t, "/filter", w); code != http.StatusBadRequest || !strings.Contains(msg, "set nodeCacheCapable: true") {
			t.Fatalf("status %d %q; want 400 saying to set nodeCacheCapable", code, msg)
		}
	}
	logged := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	if n := strings.Count(logged, "set nodeCacheCapable: true"); n != 1 {
		t.Errorf("three refusals logged %d times at verbosity 0; want once:\n%s", n, logged)
	}
}

func TestReadinessAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := New(testState(), Options{Registry: reg, Score: score.Options{Placement: score.Spread}})
	get := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w
	}
	if w := get("/healthz"); w.Code != http.StatusOK {
		t.Errorf("/healthz before sync: %d", w.Code)
	}
	if w := get("/readyz"); w.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before sync: %d", w.Code)
	}
	w := post(srv, "/filter", "application/json", bytes.NewReader(fixture(t, "requests/filter-pool.json")))
	if code, msg := refusal(t, "/filter", w); code != http.StatusServiceUnavailable || !strings.Contains(msg, "not synced") {
		t.Errorf("filter before sync: %d %s", w.Code, w.Body)
	}
	// A pod with nothing stickynet-specific needs no cluster view: it passes before the sync too.
	if w := post(srv, "/filter", "application/json", bytes.NewReader(fixture(t, "requests/filter-plain.json"))); w.Code != http.StatusOK {
		t.Errorf("plain pod's filter before sync: %d %s", w.Code, w.Body)
	}
	srv.SetReady()
	if w := get("/readyz"); w.Code != http.StatusOK {
		t.Errorf("/readyz after sync: %d", w.Code)
	}
	for _, f := range []string{"filter-pool", "filter-sriov-unrequested", "filter-plain"} {
		if w := post(srv, "/filter", "application/json", bytes.NewReader(fixture(t, "requests/"+f+".json"))); w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", f, w.Code, w.Body)
		}
	}
	post(srv, "/prioritize", "text/plain", strings.NewReader("{}"))
	m := get("/metrics").Body.String()
	for _, want := range []string{
		`stickynet_extender_requests_total{code="503",verb="filter"} 1`,
		`stickynet_extender_requests_total{code="200",verb="filter"} 4`,
		`stickynet_extender_requests_total{code="415",verb="prioritize"} 1`,
		`stickynet_extender_filtered_nodes_total{cause="pool_selector"} 2`,
		`stickynet_extender_filtered_nodes_total{cause="no_free_vf"} 1`,
		`stickynet_extender_filtered_nodes_total{cause="network_selector"} 1`,
		`stickynet_extender_filtered_nodes_total{cause="no_vfs"} 1`,
		`stickynet_extender_fast_path_total{verb="filter"} 2`,
		`stickynet_extender_request_duration_seconds_count{verb="filter"} 5`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestConcurrentRequests answers requests from several goroutines while
// the cluster view changes; under the race detector (make test-race, part
// of make test) it checks that pooled request state and the view are not
// shared unsafely.
func TestConcurrentRequests(t *testing.T) {
	st := testState()
	srv := New(st, Options{Score: score.Options{PreferLastNode: true, Placement: score.Spread}})
	srv.SetReady()
	bodies := map[string][]byte{}
	for _, f := range []string{"filter-plain", "filter-pool", "filter-sriov", "filter-sriov-unrequested", "prioritize-sticky", "prioritize-sriov"} {
		bodies[f] = fixture(t, "requests/"+f+".json")
	}
	stop := make(chan struct{})
	mutated := make(chan struct{})
	go func() {
		defer close(mutated)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"rack": fmt.Sprint(1 + i%2), "sriov": "yes"}}}
			n.Status.Allocatable = corev1.ResourceList{fast: *resource.NewQuantity(int64(i%3), resource.DecimalSI)}
			st.SetNode(n)
		}
	}()
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 200 {
				name := []string{"filter-plain", "filter-pool", "filter-sriov", "filter-sriov-unrequested", "prioritize-sticky", "prioritize-sriov"}[(g+i)%6]
				verb, _, _ := strings.Cut(name, "-")
				w := post(srv, "/"+verb, "application/json", bytes.NewReader(bodies[name]))
				if w.Code != http.StatusOK || !json.Valid(w.Body.Bytes()) {
					errs <- fmt.Errorf("%s: %d %s", name, w.Code, w.Body)
					return
				}
				if name == "filter-plain" && !strings.Contains(w.Body.String(), `"NodeNames":["n1", "n2", "n3", "n4", "n5", "zz"]`) {
					errs <- fmt.Errorf("%s: answer %s does not echo the names", name, w.Body)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(stop)
	<-mutated
}

// TestExchangePool checks what the pool keeps: at most maxIdleExchanges,
// none whose buffers and per-name slices together pass maxKeptBytes (here
// a small body with room for 400,000 names), and, after a body grew into a
// new buffer, no name that could hold the old one.
func TestExchangePool(t *testing.T) {
	var p exchangePool
	big := p.get()
	big.req.spans = make([]span, 0, 400_000)
	p.put(big)
	if len(p.idle) != 0 {
		t.Fatalf("an exchange with room for 400,000 names (about %d bytes) was kept", big.retained())
	}

	ex := p.get()
	ex.body.Write([]byte(`["n1"]`))
	ex.req.names = append(ex.req.names[:0], "n1", "n2")[:1]
	ex.res.Passed = append(ex.res.Passed[:0], "n1")[:0]
	ex.body.Grow(1 << 16) // the body moves to a larger buffer
	p.put(ex)
	if len(p.idle) != 1 || p.idle[0] != ex {
		t.Fatalf("a small exchange was not kept: %d idle", len(p.idle))
	}
	for _, s := range [][]string{ex.req.names[:cap(ex.req.names)], ex.res.Passed[:cap(ex.res.Passed)]} {
		for i, n := range s {
			if n != "" {
				t.Errorf("name %d (%q) kept after the body moved", i, n)
			}
		}
	}

	var many []*exchange
	for range maxIdleExchanges + 2 {
		many = append(many, p.get())
	}
	for _, ex := range many {
		p.put(ex)
	}
	if len(p.idle) != maxIdleExchanges {
		t.Errorf("%d idle exchanges kept, want %d", len(p.idle), maxIdleExchanges)
	}

	// A pod of more than maxCachedPodBytes is decoded each time, not kept.
	var c podCache
	huge := []byte(`{"metadata":{"name":"` + strings.Repeat("x", maxCachedPodBytes) + `"}}`)
	c.add(huge, &corev1.Pod{})
	if c.get(huge) != nil {
		t.Error("a pod of more than maxCachedPodBytes was kept")
	}
}
