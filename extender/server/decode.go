package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// errNotNodeCacheCapable answers a scheduler that sends whole Node objects.
var errNotNodeCacheCapable = errors.New(`request carries "Nodes" but no "NodeNames": ` +
	`the stickynet extender keeps its own node cache; set nodeCacheCapable: true in the scheduler's extender configuration`)

// DecodeArgs decodes and checks the body of a filter or prioritize request:
// one JSON object of type ExtenderArgs (k8s.io/kube-scheduler/extender/v1)
// with a Pod and NodeNames, and nothing after it. It accepts what
// encoding/json accepts for that type (keys match case-insensitively), except
// a key given twice, and decodes the Pod with encoding/json; the top level
// and the node names, which make up most of the body in a large cluster, it
// reads itself.
func DecodeArgs(body []byte) (*extenderv1.ExtenderArgs, error) {
	s := scanner{b: body}
	s.space()
	if s.i == len(body) {
		return nil, errors.New("empty body: expected a JSON ExtenderArgs object")
	}
	if body[s.i] != '{' {
		return nil, s.errorf("expected a JSON ExtenderArgs object")
	}
	s.i++
	var (
		args                          extenderv1.ExtenderArgs
		seenPod, seenNames, seenNodes bool
		hasNodes                      bool
	)
	s.space()
	if s.peek() == '}' {
		s.i++
	} else {
		for {
			s.space()
			key, err := s.key()
			if err != nil {
				return nil, err
			}
			s.space()
			if s.peek() != ':' {
				return nil, s.errorf("expected ':' after object key")
			}
			s.i++
			s.space()
			switch {
			case strings.EqualFold(key, "Pod"):
				if seenPod {
					return nil, errors.New(`key "Pod" given twice`)
				}
				seenPod = true
				seg, err := s.value()
				if err != nil {
					return nil, err
				}
				if !isNull(seg) {
					args.Pod = new(corev1.Pod)
					if err := json.Unmarshal(seg, args.Pod); err != nil {
						return nil, fmt.Errorf("decode Pod: %w", err)
					}
				}
			case strings.EqualFold(key, "NodeNames"):
				if seenNames {
					return nil, errors.New(`key "NodeNames" given twice`)
				}
				seenNames = true
				names, err := s.names()
				if err != nil {
					return nil, err
				}
				args.NodeNames = names
			case strings.EqualFold(key, "Nodes"):
				if seenNodes {
					return nil, errors.New(`key "Nodes" given twice`)
				}
				seenNodes = true
				seg, err := s.value()
				if err != nil {
					return nil, err
				}
				// Whole nodes are refused below, but decoded first so that a
				// malformed list is reported as such.
				if !isNull(seg) {
					var nodes corev1.NodeList
					if err := json.Unmarshal(seg, &nodes); err != nil {
						return nil, fmt.Errorf("decode Nodes: %w", err)
					}
					hasNodes = true
				}
			default:
				seg, err := s.value()
				if err != nil {
					return nil, err
				}
				if !json.Valid(seg) {
					return nil, fmt.Errorf("decode ExtenderArgs: invalid JSON value of key %q", key)
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
				return nil, s.errorf("expected ',' or '}' after object value")
			}
		}
	}
	s.space()
	if s.i != len(body) {
		return nil, s.errorf("unexpected data after the JSON object")
	}
	switch {
	case args.Pod == nil:
		return nil, errors.New(`request has no "Pod"`)
	case args.NodeNames == nil && hasNodes:
		return nil, errNotNodeCacheCapable
	case args.NodeNames == nil:
		return nil, errors.New(`request has no "NodeNames"`)
	}
	return &args, nil
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
	if j := bytes.IndexByte(s.b[start:], '"'); j >= 0 {
		raw = s.b[start : start+j]
		if bytes.IndexByte(raw, '\\') < 0 {
			// No escapes: the first quote ends the string.
			s.i = start + j + 1
			return raw, isPlain(raw), nil
		}
	}
	// Escapes: walk it byte by byte.
	s.i = start
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
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

// isPlain reports whether b is printable ASCII.
func isPlain(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
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

// names reads the NodeNames array (or null). The array's bytes are copied
// into one string and plain names, the usual case, are cut from it, so that
// thousands of names cost three allocations.
func (s *scanner) names() (*[]string, error) {
	switch s.peek() {
	case 'n':
		seg, err := s.value()
		if err != nil {
			return nil, err
		}
		if !isNull(seg) {
			return nil, fmt.Errorf("decode NodeNames: invalid value %q", seg)
		}
		return nil, nil
	case '[':
	default:
		return nil, s.errorf(`"NodeNames" must be an array of strings`)
	}
	base := s.i
	s.i++
	s.space()
	if s.peek() == ']' {
		s.i++
		out := []string{}
		return &out, nil
	}
	// Spans of the raw names, relative to base; a negative start marks a
	// name that is not plain, decoded into decoded.
	type span struct{ from, to int32 }
	spans := make([]span, 0, bytes.Count(s.b[s.i:], []byte{','})+1)
	var decoded []string
	for {
		s.space()
		raw, plain, err := s.str()
		if err != nil {
			return nil, fmt.Errorf(`%w (in "NodeNames")`, err)
		}
		if plain {
			to := int32(s.i - 1 - base)
			spans = append(spans, span{to - int32(len(raw)), to})
		} else {
			name, err := unquote(raw)
			if err != nil {
				return nil, fmt.Errorf("decode NodeNames: %w", err)
			}
			spans = append(spans, span{-1, int32(len(decoded))})
			decoded = append(decoded, name)
		}
		s.space()
		c := s.peek()
		s.i++
		if c == ']' {
			break
		}
		if c != ',' {
			s.i--
			return nil, s.errorf(`expected ',' or ']' in "NodeNames"`)
		}
	}
	all := string(s.b[base:s.i])
	out := make([]string, len(spans))
	for i, sp := range spans {
		if sp.from < 0 {
			out[i] = decoded[sp.to]
		} else {
			out[i] = all[sp.from:sp.to]
		}
	}
	return &out, nil
}

func isNull(seg []byte) bool { return bytes.Equal(seg, []byte("null")) }
