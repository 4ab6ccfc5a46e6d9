package server

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// errNotNodeCacheCapable answers a scheduler that sends whole Node objects.
var errNotNodeCacheCapable = errors.New(`request carries "Nodes" but no "NodeNames": ` +
	`the stickynet extender keeps its own node cache; set nodeCacheCapable: true in the scheduler's extender configuration`)

// DecodeArgs decodes and checks the body of a filter or prioritize request:
// one JSON object of type ExtenderArgs (k8s.io/kube-scheduler/extender/v1)
// with a Pod and NodeNames, and nothing after it. It accepts what
// encoding/json accepts for that type (keys match case-insensitively), except
// a key given twice. The top level and the node names, which make up most
// of the body in a large cluster, it reads itself; of the Pod it decodes,
// with encoding/json, only what the extender reads (see podArgs), after
// checking that the whole Pod is valid JSON.
func DecodeArgs(body []byte) (*extenderv1.ExtenderArgs, error) {
	var r request
	if err := r.decode(body, nil); err != nil {
		return nil, err
	}
	names := r.split(false)
	return &extenderv1.ExtenderArgs{Pod: r.pod, NodeNames: &names}, nil
}

// decodePreemption decodes the body of a preempt request, an
// ExtenderPreemptionArgs, with encoding/json (the scheduler asks it only
// when it is about to evict pods): the Pod, as podArgs, into ex.req and the
// candidate nodes into ex.victims. A scheduler whose extender is
// nodeCacheCapable sends NodeNameToMetaVictims; one that is not sends
// NodeNameToVictims, whose pods are reduced here to their UIDs, as the
// answer carries them either way.
func decodePreemption(ex *exchange) error {
	var args struct {
		Pod                   *podArgs
		NodeNameToVictims     map[string]*extenderv1.Victims
		NodeNameToMetaVictims map[string]*extenderv1.MetaVictims
	}
	if err := json.Unmarshal(ex.body.Bytes(), &args); err != nil {
		return fmt.Errorf("decode ExtenderPreemptionArgs: %w", err)
	}
	if args.Pod == nil {
		return errors.New(`request has no "Pod"`)
	}
	ex.req.pod = args.Pod.pod()
	ex.victims = args.NodeNameToMetaVictims
	if ex.victims == nil {
		ex.victims = make(map[string]*extenderv1.MetaVictims, len(args.NodeNameToVictims))
		for node, v := range args.NodeNameToVictims {
			mv := &extenderv1.MetaVictims{}
			if v != nil {
				mv.NumPDBViolations = v.NumPDBViolations
				for _, p := range v.Pods {
					if p != nil {
						mv.Pods = append(mv.Pods, &extenderv1.MetaPod{UID: string(p.UID)})
					}
				}
			}
			ex.victims[node] = mv
		}
	}
	ex.req.count = len(ex.victims)
	return nil
}

// request is a decoded filter or prioritize request. The server keeps one
// per request in flight and reuses it.
type request struct {
	pod *corev1.Pod
	// rawNames is the NodeNames array as sent, checked to be an array of
	// strings; plain says that every name in it is printable ASCII without
	// escapes, so that each appears in it as is, between quotes.
	rawNames []byte
	plain    bool
	count    int
	// spans locate each name in rawNames (its raw content); a name that is
	// not plain has from < 0 and its decoded value in decoded[to].
	spans   []span
	decoded []string
	names   []string // filled by split
}

type span struct{ from, to int32 }

// decode decodes body into r. A Pod found in pods (if not nil) is not
// decoded again; one that is decoded is added to it.
func (r *request) decode(body []byte, pods *podCache) error {
	r.pod, r.rawNames, r.plain, r.count = nil, nil, false, 0
	r.spans, r.decoded, r.names = r.spans[:0], r.decoded[:0], r.names[:0]
	s := scanner{b: body}
	s.space()
	if s.i == len(body) {
		return errors.New("empty body: expected a JSON ExtenderArgs object")
	}
	if body[s.i] != '{' {
		return s.errorf("expected a JSON ExtenderArgs object")
	}
	s.i++
	var seenPod, seenNames, seenNodes, hasNodes bool
	s.space()
	if s.peek() == '}' {
		s.i++
	} else {
		for {
			s.space()
			key, err := s.key()
			if err != nil {
				return err
			}
			s.space()
			if s.peek() != ':' {
				return s.errorf("expected ':' after object key")
			}
			s.i++
			s.space()
			switch {
			case strings.EqualFold(key, "Pod"):
				if seenPod {
					return errors.New(`key "Pod" given twice`)
				}
				seenPod = true
				seg, err := s.value()
				if err != nil {
					return err
				}
				r.pod = nil
				if !isNull(seg) {
					if r.pod = pods.get(seg); r.pod == nil {
						var p podArgs
						if err := json.Unmarshal(seg, &p); err != nil {
							return fmt.Errorf("decode Pod: %w", err)
						}
						r.pod = p.pod()
						pods.add(seg, r.pod)
					}
				}
			case strings.EqualFold(key, "NodeNames"):
				if seenNames {
					return errors.New(`key "NodeNames" given twice`)
				}
				seenNames = true
				if err := r.scanNames(&s); err != nil {
					return err
				}
			case strings.EqualFold(key, "Nodes"):
				if seenNodes {
					return errors.New(`key "Nodes" given twice`)
				}
				seenNodes = true
				seg, err := s.value()
				if err != nil {
					return err
				}
				// Whole nodes are refused below, but decoded first so that a
				// malformed list is reported as such.
				if !isNull(seg) {
					var nodes corev1.NodeList
					if err := json.Unmarshal(seg, &nodes); err != nil {
						return fmt.Errorf("decode Nodes: %w", err)
					}
					hasNodes = true
				}
			default:
				seg, err := s.value()
				if err != nil {
					return err
				}
				if !json.Valid(seg) {
					return fmt.Errorf("decode ExtenderArgs: invalid JSON value of key %q", key)
				}
			}
			s.space()
			c := s.peek()
			s.i++
			if c == '}' {
				break
			}
			if c != ',' {
				s.i--
				return s.errorf("expected ',' or '}' after object value")
			}
		}
	}
	s.space()
	if s.i != len(body) {
		return s.errorf("unexpected data after the JSON object")
	}
	switch {
	case r.pod == nil:
		return errors.New(`request has no "Pod"`)
	case r.rawNames == nil && hasNodes:
		return errNotNodeCacheCapable
	case r.rawNames == nil:
		return errors.New(`request has no "NodeNames"`)
	}
	return nil
}

// podArgs is the part of a Pod the extender reads: what demand.Of needs
// and what identifies the pod in logs. Decoding only this is several times
// faster than decoding a whole Pod.
type podArgs struct {
	Metadata struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		UID         types.UID         `json:"uid"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers     []containerArgs `json:"containers"`
		InitContainers []containerArgs `json:"initContainers"`
	} `json:"spec"`
}

type containerArgs struct {
	RestartPolicy *corev1.ContainerRestartPolicy `json:"restartPolicy"`
	Resources     struct {
		Requests corev1.ResourceList `json:"requests"`
	} `json:"resources"`
}

// pod returns the Pod with the fields of p set.
func (p *podArgs) pod() *corev1.Pod {
	out := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: p.Metadata.Name, Namespace: p.Metadata.Namespace, UID: p.Metadata.UID, Annotations: p.Metadata.Annotations,
	}}
	containers := func(cs []containerArgs) []corev1.Container {
		if cs == nil {
			return nil
		}
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i].RestartPolicy = c.RestartPolicy
			out[i].Resources.Requests = c.Resources.Requests
		}
		return out
	}
	out.Spec.Containers = containers(p.Spec.Containers)
	out.Spec.InitContainers = containers(p.Spec.InitContainers)
	return out
}

// podCache holds the pods decoded last, by their JSON. kube-scheduler
// sends each pod to filter and then, unchanged, to prioritize; decoding it
// was about half of what a request allocated, and the garbage collections
// that this garbage brings were the tail of the extender's latency. The
// pods it returns are shared: nothing may modify them. A nil *podCache
// holds nothing.
type podCache struct {
	mu      sync.Mutex
	entries [podCacheSize]struct {
		raw []byte
		pod *corev1.Pod
	}
	next int
}

// podCacheSize is how many pods a podCache holds: a scheduler asks about
// one pod at a time, a few schedulers (profiles, replicas) share an
// extender.
const podCacheSize = 8

// maxCachedPodBytes bounds the JSON of a pod a podCache keeps (a pod of
// the benchmark's, with ten environment variables, is 4 KB).
const maxCachedPodBytes = 64 << 10

// get returns the pod decoded from raw, or nil.
func (c *podCache) get(raw []byte) *corev1.Pod {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if e := &c.entries[i]; e.pod != nil && bytes.Equal(e.raw, raw) {
			return e.pod
		}
	}
	return nil
}

// add remembers pod as decoded from raw, in place of the oldest entry. A
// pod of more than maxCachedPodBytes is not kept: each entry's copy keeps
// the largest capacity it had.
func (c *podCache) add(raw []byte, pod *corev1.Pod) {
	if c == nil || len(raw) > maxCachedPodBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &c.entries[c.next]
	e.raw, e.pod = append(e.raw[:0], raw...), pod
	c.next = (c.next + 1) % len(c.entries)
}

// scanner reads JSON from b at i.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("decode ExtenderArgs: offset %d: %s", s.i, fmt.Sprintf(format, args...))
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str reads a string at i and returns its raw content (between the
// quotes) and whether that is plain: printable ASCII without escapes, equal
// to its decoded value.
func (s *scanner) str() (raw []byte, plain bool, err error) {
	if s.peek() != '"' {
		return nil, false, s.errorf("expected a string")
	}
	start := s.i + 1
	if j := bytes.IndexByte(s.b[start:], '"'); j >= 0 && isPlain(s.b[start:start+j]) {
		// No backslash before it: this quote ends the string.
		s.i = start + j + 1
		return s.b[start : start+j], true, nil
	}
	// Escapes or other bytes to decode: walk it byte by byte.
	s.i = start
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			s.i++
			return s.b[start : s.i-1], false, nil
		case '\\':
			s.i += 2 // the escaped byte cannot end the string; \u digits are checked on decoding
			continue
		}
		s.i++
	}
	return nil, false, s.errorf("unterminated string")
}

// isPlain reports whether b is printable ASCII other than '\\', 32 bytes
// at a time (it reads all node names of a request at once). In an 8-byte
// word x, a byte >= 0x80 has its high bit set in x itself, a byte < 0x20
// in x - 0x20 and a '\\' or DEL in (x ^ c) - 1. A borrow carries a high
// bit into a byte that is not special only from a lower byte that is, so a
// word is flagged exactly when it holds a special byte.
func isPlain(b []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	special := func(b []byte) uint64 {
		x := binary.LittleEndian.Uint64(b)
		return x | (x - 0x20*ones) | ((x ^ 0x5c*ones) - ones) | ((x ^ 0x7f*ones) - ones)
	}
	for len(b) >= 32 {
		if (special(b)|special(b[8:])|special(b[16:])|special(b[24:]))&highs != 0 {
			return false
		}
		b = b[32:]
	}
	for len(b) >= 8 {
		if special(b)&highs != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

// unquote decodes a string that is not plain, the way encoding/json does.
func unquote(raw []byte) (string, error) {
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	var out string
	if err := json.Unmarshal(q, &out); err != nil {
		return "", err
	}
	return out, nil
}

// key reads an object key.
func (s *scanner) key() (string, error) {
	raw, plain, err := s.str()
	if err != nil {
		return "", err
	}
	if plain {
		return string(raw), nil
	}
	k, err := unquote(raw)
	if err != nil {
		return "", fmt.Errorf("decode ExtenderArgs: object key: %w", err)
	}
	return k, nil
}

// value skips the value at i and returns its bytes. It only finds where
// the value ends; callers decode or validate it.
func (s *scanner) value() ([]byte, error) {
	start := s.i
	depth := 0
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case '"':
			if _, _, err := s.str(); err != nil {
				return nil, err
			}
			if depth == 0 {
				return s.b[start:s.i], nil
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				if s.i == start {
					return nil, s.errorf("expected a value")
				}
				return s.b[start:s.i], nil
			}
			depth--
			if depth == 0 {
				s.i++
				return s.b[start:s.i], nil
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				if s.i == start {
					return nil, s.errorf("expected a value")
				}
				return s.b[start:s.i], nil
			}
		}
		s.i++
	}
	if depth == 0 && s.i > start {
		return s.b[start:s.i], nil
	}
	return nil, s.errorf("unexpected end of input")
}

// scanNames checks the NodeNames value at i (an array of strings, or
// null) and records it in r without splitting it.
func (r *request) scanNames(s *scanner) error {
	switch s.peek() {
	case 'n':
		seg, err := s.value()
		if err != nil {
			return err
		}
		if !isNull(seg) {
			return fmt.Errorf("decode NodeNames: invalid value %q", seg)
		}
		r.rawNames = nil
		return nil
	case '[':
	default:
		return s.errorf(`"NodeNames" must be an array of strings`)
	}
	start := s.i
	r.plain, r.count = true, 0
	if isPlain(s.b[start:]) {
		// Nothing from here to the end of the body is escaped or outside
		// printable ASCII (kube-scheduler writes NodeNames last): every
		// quote opens or closes a name.
		return r.scanPlainNames(s, start)
	}
	s.i++
	s.space()
	if s.peek() == ']' {
		s.i++
		r.rawNames = s.b[start:s.i]
		return nil
	}
	for {
		s.space()
		raw, plain, err := s.str()
		if err != nil {
			return fmt.Errorf(`%w (in "NodeNames")`, err)
		}
		if plain {
			to := int32(s.i - 1 - start)
			r.spans = append(r.spans, span{to - int32(len(raw)), to})
		} else {
			name, err := unquote(raw)
			if err != nil {
				return fmt.Errorf("decode NodeNames: %w", err)
			}
			r.plain = false
			r.spans = append(r.spans, span{-1, int32(len(r.decoded))})
			r.decoded = append(r.decoded, name)
		}
		r.count++
		s.space()
		c := s.peek()
		s.i++
		if c == ']' {
			r.rawNames = s.b[start:s.i]
			return nil
		}
		if c != ',' {
			s.i--
			return s.errorf(`expected ',' or ']' in "NodeNames"`)
		}
	}
}

// scanPlainNames is scanNames for an array at start known to hold no
// escape and no byte outside printable ASCII.
func (r *request) scanPlainNames(s *scanner, start int) error {
	b := s.b
	s.i = start + 1
	s.space()
	if s.peek() == ']' {
		s.i++
		r.rawNames = b[start:s.i]
		return nil
	}
	for {
		s.space()
		if s.peek() != '"' {
			return s.errorf(`expected a string (in "NodeNames")`)
		}
		from := s.i + 1
		j := bytes.IndexByte(b[from:], '"')
		if j < 0 {
			return s.errorf(`unterminated string (in "NodeNames")`)
		}
		s.i = from + j + 1
		r.spans = append(r.spans, span{int32(from - start), int32(from + j - start)})
		r.count++
		// Usually the separator follows at once.
		var c byte
		if s.i < len(b) && (b[s.i] == ',' || b[s.i] == ']') {
			c = b[s.i]
		} else {
			s.space()
			c = s.peek()
		}
		s.i++
		if c == ']' {
			r.rawNames = b[start:s.i]
			return nil
		}
		if c != ',' {
			s.i--
			return s.errorf(`expected ',' or ']' in "NodeNames"`)
		}
	}
}

// split returns the node names. With shared, plain names point into the
// request body and are valid only as long as it is; otherwise they are
// copied (in one allocation).
func (r *request) split(shared bool) []string {
	if r.rawNames == nil {
		return nil
	}
	if len(r.names) == r.count && r.count > 0 {
		return r.names
	}
	var raw string
	if shared {
		raw = unsafe.String(unsafe.SliceData(r.rawNames), len(r.rawNames))
	} else {
		raw = string(r.rawNames)
	}
	names := slices.Grow(r.names[:0], r.count)
	for _, sp := range r.spans {
		if sp.from < 0 {
			names = append(names, r.decoded[sp.to])
		} else {
			names = append(names, raw[sp.from:sp.to])
		}
	}
	r.names = names
	return names
}

func isNull(seg []byte) bool { return bytes.Equal(seg, []byte("null")) }
