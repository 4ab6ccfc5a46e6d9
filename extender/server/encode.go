package server

import (
	"encoding/json"
	"strconv"

	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/stickynet/stickynet/extender/filter"
)

// The answers are written by hand rather than by encoding/json: in a large
// cluster they hold thousands of node names, and reflection would cost more
// than the decision. The layout is that of the extender/v1 types, which
// carry no JSON tags.

// An ExtenderFilterResult that passes every node is passAllHead, the
// request's NodeNames array as it came, and passAllTail.
const passAllHead = `{"NodeNames":`

var passAllTail = []byte(`,"FailedNodes":{},"FailedAndUnresolvableNodes":{},"Error":""}`)

// appendFilterResult appends res as an ExtenderFilterResult for a
// nodeCacheCapable extender. plain says the node names need no escaping.
func appendFilterResult(b []byte, res *filter.Result, plain bool) []byte {
	b = append(b, `{"NodeNames":[`...)
	for i, n := range res.Passed {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendName(b, n, plain)
	}
	// Every failure is unresolvable: filter.Result.Failed says why.
	b = append(b, `],"FailedNodes":{},"FailedAndUnresolvableNodes":`...)
	b = appendFailures(b, res, plain)
	return append(b, `,"Error":""}`...)
}

// appendFailures appends the failures as a FailedNodesMap.
func appendFailures(b []byte, res *filter.Result, plain bool) []byte {
	b = append(b, '{')
	var quoted [][]byte // per cause
	for i, f := range res.Failures {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendName(b, f.Node, plain)
		b = append(b, ':')
		for int(f.Cause) >= len(quoted) {
			quoted = append(quoted, nil)
		}
		if quoted[f.Cause] == nil {
			quoted[f.Cause] = appendString(nil, res.Reason(f.Cause))
		}
		b = append(b, quoted[f.Cause]...)
	}
	return append(b, '}')
}

// appendPriorities appends a HostPriorityList. plain says the node names
// need no escaping.
func appendPriorities(b []byte, l extenderv1.HostPriorityList, plain bool) []byte {
	b = append(b, '[')
	for i, hp := range l {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"Host":`...)
		b = appendName(b, hp.Host, plain)
		b = append(b, `,"Score":`...)
		b = strconv.AppendInt(b, hp.Score, 10)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendName appends a node name as a JSON string; plain says it is
// printable ASCII without '"' or '\\' (checked on decoding).
func appendName(b []byte, name string, plain bool) []byte {
	if !plain {
		return appendString(b, name)
	}
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"')
}

// appendString appends s as a JSON string: printable ASCII other than '"'
// and '\' as is (every node name), anything else through encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSON appends v as encoding/json writes it; for answers small enough
// that reflection costs nothing that matters (preempt's).
func appendJSON(b []byte, v any) []byte {
	j, err := json.Marshal(v)
	if err != nil { // the extender/v1 types always encode
		panic(err)
	}
	return append(b, j...)
}
