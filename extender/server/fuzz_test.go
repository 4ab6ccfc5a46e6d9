package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// referenceDecode is what DecodeArgs must agree with: encoding/json, as
// kube-scheduler uses it, into ExtenderArgs whose Pod has the fields the
// extender reads (podArgs), plus the same checks of what is required.
func referenceDecode(body []byte) (*extenderv1.ExtenderArgs, error) {
	var args struct {
		Pod       *podArgs
		Nodes     *corev1.NodeList
		NodeNames *[]string
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&args); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data")
	}
	if args.Pod == nil || args.NodeNames == nil {
		return nil, errors.New("incomplete")
	}
	return &extenderv1.ExtenderArgs{Pod: args.Pod.pod(), NodeNames: args.NodeNames}, nil
}

// FuzzDecodeArgs checks DecodeArgs against encoding/json on any input (it
// may refuse only what encoding/json refuses, plus keys given twice, and must
// decode the same Pod and names), and that the verbs never answer 5xx.
func FuzzDecodeArgs(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "requests", "*.json"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seed requests: %v", err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"pod":{},"nodenames":[]}`,
		`{"P\u006fd":{"metadata":{"name":"a\u00e9"}},"NodeNames":["n\u0031","\ud800"]}`,
		`{"Pod":{},"NodeNames":["a"],"Extra":{"deep":[[[[1]]]],"s":"}]"}}`,
		"{\"Pod\":{},\"NodeNames\":[\"\xff\x7f\"]}",
		`{"Pod":{},"NodeNames":["a",]}`,
		`{"Pod":{},"NodeNames":["a"],}`,
		`{"Pod":{},"NodeNames":["a\"b"]}`,
		`{"Pod":{"spec":{"containers":[{"resources":{"requests":{"stickynet.io/sriov-fast":"1e3"}}}]},"metadata":{"annotations":{"stickynet.io/sriov-network":"fast","stickynet.io/assigned-pool":"rack1"}}},"NodeNames":["n1","n2"]}`,
		`{"Pod":{},"Nodes":{"items":5},"NodeNames":["a"]}`,
		`  {"Pod" : {} , "NodeNames" : [ ] }  `,
		`null`, `{}`, `"x"`, `{"Pod":{}`,
	} {
		f.Add([]byte(s))
	}
	srv := newTestServer(Options{MaxRequestBytes: 1 << 20})
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := DecodeArgs(body)
		want, refErr := referenceDecode(body)
		switch {
		case err == nil && refErr != nil:
			t.Fatalf("DecodeArgs accepted what encoding/json refuses (%v): %q", refErr, body)
		case err != nil && refErr == nil && !strings.Contains(err.Error(), "given twice"):
			t.Fatalf("DecodeArgs refused what encoding/json accepts: %v: %q", err, body)
		case err == nil:
			if !equality.Semantic.DeepEqual(got.Pod, want.Pod) {
				t.Fatalf("Pod differs from encoding/json's:\n%+v\n%+v", got.Pod, want.Pod)
			}
			if !equality.Semantic.DeepEqual(*got.NodeNames, *want.NodeNames) {
				t.Fatalf("NodeNames %q, encoding/json %q", *got.NodeNames, *want.NodeNames)
			}
		}
		for _, verb := range []string{FilterVerb, PrioritizeVerb} {
			w := post(srv, "/"+verb, "application/json", bytes.NewReader(body))
			code, _ := refusal(t, "/"+verb, w)
			switch {
			case err == nil && code != http.StatusOK:
				t.Fatalf("%s: status %d for a request that decodes: %s", verb, code, w.Body)
			case err != nil && code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge:
				t.Fatalf("%s: status %d for a request that does not decode (%v): %s", verb, code, err, w.Body)
			}
			if w.Code == http.StatusOK && !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%s: answer is not JSON: %s", verb, w.Body)
			}
		}
	})
}
