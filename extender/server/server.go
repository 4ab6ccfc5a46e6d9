// Package server owns the stickynet scheduler extender's HTTP interface: the
// filter and prioritize verbs of k8s.io/kube-scheduler/extender/v1 for a
// nodeCacheCapable extender (requests carry node names only), /healthz,
// /readyz and Prometheus /metrics. Verbs take POST with a JSON body of
// bounded size; any other request gets a 4xx status with a message saying
// what was expected.
package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/stickynet/stickynet/extender/demand"
	"github.com/stickynet/stickynet/extender/filter"
	"github.com/stickynet/stickynet/extender/score"
	"github.com/stickynet/stickynet/extender/state"
)

// DefaultMaxRequestBytes bounds request bodies unless Options say otherwise:
// room for a large pod and the names of some 20,000 nodes.
const DefaultMaxRequestBytes = 8 << 20

// The verbs, as named in the scheduler's extender configuration
// (filterVerb, prioritizeVerb, preemptVerb) and served at /<verb>.
const (
	FilterVerb     = "filter"
	PrioritizeVerb = "prioritize"
	PreemptVerb    = "preempt"
)

// source is the cluster view the verbs read.
type source interface {
	Read(fn func(state.Reader))
}

var _ source = (*state.State)(nil)

// Options configure a Server.
type Options struct {
	// MaxRequestBytes bounds a verb's request body; 0 means DefaultMaxRequestBytes.
	MaxRequestBytes int64
	// Filter configures the filter verb.
	Filter filter.Options
	// Score configures the prioritize verb.
	Score score.Options
	// Registry receives the server's metrics and is what /metrics serves;
	// nil means a new registry of the server's own.
	Registry *prometheus.Registry
}

// Server answers the scheduler. Build one with New.
type Server struct {
	opts  Options
	src   source
	ready atomic.Bool
	// draining is set once the extender is shutting down (Drain).
	draining atomic.Bool
	metrics  *metrics
	mux      *http.ServeMux
	// exchanges are reused from request to request.
	exchanges exchangePool
	// pods are the pods decoded last, shared by filter and prioritize.
	pods podCache
	// rejects limits the refusals logged at the default verbosity.
	rejects rejectLog
}

// rejectLog keeps when each kind of refusal (verb and status) was last
// logged at the default verbosity. kube-scheduler drops the body of an
// answer other than 200: its event says only "failed filter with extender
// at URL …, code N", so the extender's log is the one place that says why
// (a scheduler configuration without nodeCacheCapable, a body too large).
type rejectLog struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// rejectLogEvery is how often each kind of refusal is logged at the
// default verbosity; the others are logged at verbosity 2.
const rejectLogEvery = time.Minute

func (l *rejectLog) log(logger klog.Logger, verb string, code int, r *http.Request, err error) {
	key := verb + " " + strconv.Itoa(code)
	now := time.Now()
	l.mu.Lock()
	loud := now.Sub(l.last[key]) >= rejectLogEvery
	if loud {
		if l.last == nil {
			l.last = map[string]time.Time{}
		}
		l.last[key] = now
	}
	l.mu.Unlock()
	if !loud {
		logger = logger.V(2)
	}
	logger.Info("Rejected request (like refusals are logged again at verbosity 2, or after a minute)", "verb", verb, "status", code, "remote", r.RemoteAddr, "err", err)
}

// exchange is what one request needs: its body, its decoding, the filter's
// result and the answer. Node names point into the body, so none of it may
// outlive the request.
type exchange struct {
	body bytes.Buffer
	// bodyCap is the body's capacity when the exchange left the pool.
	bodyCap int
	req     request
	res     filter.Result
	prio    score.Result
	// victims is a preempt request's candidate nodes and their victims.
	victims map[string]*extenderv1.MetaVictims
	// The answer is out, followed by raw and tail when raw is set (a part
	// of the body sent back as is).
	out, raw, tail []byte
}

// exchangePool keeps idle exchanges. Unlike a sync.Pool it keeps them
// across garbage collections, and any goroutine gets any of them: an
// exchange's buffers grow to the largest request it served (some 500 KB
// at 5,000 nodes), and a sync.Pool, which drops what it holds over two
// collections and keeps one object per P out of the others' reach, made
// the extender grow new ones often enough that their garbage brought the
// next collection sooner.
type exchangePool struct {
	mu   sync.Mutex
	idle []*exchange
}

// Bounds of what an exchangePool keeps: a few schedulers ask at a time,
// and an exchange grown by a request far larger than a cluster's usual
// (by exchange.retained) is let go.
const (
	maxIdleExchanges = 8
	maxKeptBytes     = 8 << 20 // about 20,000 cloud-style node names
)

func (p *exchangePool) get() *exchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ex *exchange
	if n := len(p.idle); n > 0 {
		ex = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
	} else {
		ex = new(exchange)
	}
	ex.bodyCap = ex.body.Cap()
	return ex
}

func (p *exchangePool) put(ex *exchange) {
	ex.victims = nil
	if ex.retained() > maxKeptBytes {
		return
	}
	if ex.body.Cap() != ex.bodyCap {
		// The body grew into a new buffer: names kept past this request's
		// would hold the old one.
		ex.forgetNames()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) < maxIdleExchanges {
		p.idle = append(p.idle, ex)
	}
}

// retained is about what ex keeps between requests: its buffers and, per
// node name it has room for, the slices indexed by name (spans, names,
// nodes passed, failures, priorities and scores).
func (ex *exchange) retained() int {
	const perName = int(unsafe.Sizeof(span{}) + 2*unsafe.Sizeof("") + unsafe.Sizeof(filter.Failure{}) +
		unsafe.Sizeof(extenderv1.HostPriority{}) + 1)
	names := max(cap(ex.req.spans), cap(ex.req.names), cap(ex.req.decoded), cap(ex.res.Passed), cap(ex.res.Failures), cap(ex.prio.Priorities))
	return ex.body.Cap() + cap(ex.out) + names*perName
}

// forgetNames clears every name ex holds, to the slices' capacity.
func (ex *exchange) forgetNames() {
	clear(ex.req.names[:cap(ex.req.names)])
	clear(ex.req.decoded[:cap(ex.req.decoded)])
	clear(ex.res.Passed[:cap(ex.res.Passed)])
	clear(ex.res.Failures[:cap(ex.res.Failures)])
	clear(ex.prio.Priorities[:cap(ex.prio.Priorities)])
	ex.req.rawNames, ex.raw, ex.tail = nil, nil, nil
}

// New returns a Server that reads src. It answers verbs with 503 until
// SetReady is called.
func New(src source, opts Options) *Server {
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	s := &Server{opts: opts, src: src, metrics: newMetrics(opts.Registry), mux: http.NewServeMux()}
	s.mux.HandleFunc("/"+FilterVerb, s.verb(FilterVerb, s.decodeArgs, s.filter, demand.Demand.Placed))
	s.mux.HandleFunc("/"+PrioritizeVerb, s.verb(PrioritizeVerb, s.decodeArgs, s.prioritize, opts.Score.Prefers))
	s.mux.HandleFunc("/"+PreemptVerb, s.verb(PreemptVerb, decodePreemption, s.preempt, demand.Demand.Placed))
	s.mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { text(w, http.StatusOK, "ok") })
	s.mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case s.draining.Load():
			text(w, http.StatusServiceUnavailable, "shutting down")
		case !s.ready.Load():
			text(w, http.StatusServiceUnavailable, "informer caches not synced yet")
		default:
			text(w, http.StatusOK, "ok")
		}
	})
	s.mux.Handle("/metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	return s
}

// SetReady marks the cluster view complete: verbs are answered from now on.
func (s *Server) SetReady() { s.ready.Store(true) }

// Drain makes /readyz fail from now on, while the verbs are still answered:
// the extender is shutting down, and the Service's endpoints drop it first.
func (s *Server) Drain() { s.draining.Store(true) }

// ServeHTTP serves the verbs, health and metrics.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// verbFunc appends the JSON answer to the decoded request of ex to ex.out.
type verbFunc func(ex *exchange, d demand.Demand)

// decodeFunc decodes the body of ex into ex.req (and, for preempt, ex.victims).
type decodeFunc func(ex *exchange) error

// decodeArgs decodes a filter or prioritize request.
func (s *Server) decodeArgs(ex *exchange) error { return ex.req.decode(ex.body.Bytes(), &s.pods) }

// verb wraps a verb with the checks every request passes (method, content
// type, size, decoding, readiness for the pods whose answer needsState),
// metrics and panic recovery.
func (s *Server) verb(name string, decode decodeFunc, fn verbFunc, needsState func(demand.Demand) bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		begin := time.Now()
		code := http.StatusOK
		logger := klog.FromContext(r.Context())
		defer func() {
			if p := recover(); p != nil {
				logger.Error(fmt.Errorf("panic: %v", p), "Verb handler panicked", "verb", name)
				code = http.StatusInternalServerError
				text(w, code, "internal error")
			}
			s.metrics.observe(name, code, time.Since(begin))
		}()
		ex := s.exchanges.get()
		defer s.exchanges.put(ex)
		code, err := s.readBody(w, r, &ex.body)
		if err != nil {
			s.rejects.log(logger, name, code, r, err)
			refuse(w, name, code, err.Error())
			return
		}
		if err := decode(ex); err != nil {
			code = http.StatusBadRequest
			s.rejects.log(logger, name, code, r, err)
			refuse(w, name, code, name+": "+err.Error())
			return
		}
		d := demand.Of(ex.req.pod)
		// A pod the verb answers without the cluster view (nothing
		// stickynet-specific) is answered before the caches sync too: a
		// scheduler that calls the extender for every pod keeps scheduling
		// them while the extender starts.
		if !s.ready.Load() && needsState(d) {
			code = http.StatusServiceUnavailable
			s.rejects.log(logger, name, code, r, errors.New("the informer caches are not synced yet"))
			refuse(w, name, code, "the stickynet extender's informer caches are not synced yet")
			return
		}
		ex.out, ex.raw, ex.tail = ex.out[:0], nil, nil
		fn(ex, d)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(ex.out)+len(ex.raw)+len(ex.tail)))
		_, _ = w.Write(ex.out)
		if ex.raw != nil {
			_, _ = w.Write(ex.raw)
			_, _ = w.Write(ex.tail)
		}
		logger.V(4).Info("Answered", "verb", name, "pod", klog.KObj(ex.req.pod), "nodes", ex.req.count,
			"pool", d.Pool, "network", d.Network, "elapsed", time.Since(begin))
	}
}

// tooLargeHint ends a refusal of a body too large: a scheduler whose
// extender configuration lacks nodeCacheCapable sends whole Node objects.
const tooLargeHint = " (a scheduler sends whole Node objects unless the extender's entry in its configuration has nodeCacheCapable: true, which stickynet needs; else raise --max-request-bytes)"

// readBody checks the method and content type and reads the body, up to
// MaxRequestBytes, into buf. On error it returns the status to answer with.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, buf *bytes.Buffer) (int, error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: extender verbs take POST with a JSON body", r.Method)
	}
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return http.StatusUnsupportedMediaType, fmt.Errorf("content type %q not supported: expected application/json", ct)
	}
	if r.ContentLength > s.opts.MaxRequestBytes {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("body of %d bytes exceeds the limit of %d bytes%s", r.ContentLength, s.opts.MaxRequestBytes, tooLargeHint)
	}
	buf.Reset()
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + 1) // +1: ReadFrom needs room to see the end
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes)); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("body exceeds the limit of %d bytes%s", tooLarge.Limit, tooLargeHint)
		}
		return http.StatusBadRequest, fmt.Errorf("read body: %w", err)
	}
	return http.StatusOK, nil
}

func (s *Server) filter(ex *exchange, d demand.Demand) {
	if !d.Placed() {
		// Every node passes: the names go back as they came.
		s.metrics.fastPath.WithLabelValues(FilterVerb).Inc()
		ex.out = append(ex.out, passAllHead...)
		ex.raw, ex.tail = ex.req.rawNames, passAllTail
		return
	}
	names := ex.req.split(true)
	s.src.Read(func(r state.Reader) { s.opts.Filter.Into(&ex.res, d, names, r) })
	s.metrics.countFailures(ex.res.Failures)
	ex.out = appendFilterResult(ex.out, &ex.res, ex.req.plain)
}

func (s *Server) prioritize(ex *exchange, d demand.Demand) {
	if !s.opts.Score.Prefers(d) {
		s.metrics.fastPath.WithLabelValues(PrioritizeVerb).Inc()
		ex.out = append(ex.out, "[]"...)
		return
	}
	names := ex.req.split(true)
	s.src.Read(func(r state.Reader) { s.opts.Score.Into(&ex.prio, d, names, r) })
	if len(ex.prio.Priorities) == 0 {
		s.metrics.fastPath.WithLabelValues(PrioritizeVerb).Inc()
	}
	ex.out = appendPriorities(ex.out, ex.prio.Priorities, ex.req.plain)
}

// preempt answers a preempt request: the candidate nodes where the pod
// could work once the scheduler has evicted the victims, each with its
// victims unchanged. Without it the scheduler would evict pods on a node
// outside the pod's pool, which the filter then refuses: the victims
// evicted for nothing, and the pod preempting again on the next such node.
func (s *Server) preempt(ex *exchange, d demand.Demand) {
	kept := ex.victims
	if d.Placed() {
		victims := make(map[string][]types.UID, len(ex.victims))
		for n, v := range ex.victims {
			var uids []types.UID
			if v != nil {
				for _, p := range v.Pods {
					if p != nil {
						uids = append(uids, types.UID(p.UID))
					}
				}
			}
			victims[n] = uids
		}
		s.src.Read(func(r state.Reader) { s.opts.Filter.Preemption(&ex.res, d, victims, r) })
		kept = make(map[string]*extenderv1.MetaVictims, len(ex.res.Passed))
		for _, n := range ex.res.Passed {
			kept[n] = ex.victims[n]
		}
	}
	ex.out = appendJSON(ex.out, extenderv1.ExtenderPreemptionResult{NodeNameToMetaVictims: kept})
}

// refuse answers a verb the extender cannot serve with code and msg. A
// filter request from a scheduler (POST, JSON) is answered 200 with msg as
// the result's Error instead: kube-scheduler keeps only the status code of
// another answer (its event read "failed filter with extender at URL …,
// code 400"), and puts a filter's Error in the pod's FailedScheduling
// event, read from kube-scheduler's extender.go. Prioritize and preempt
// answers have no Error field; a scheduler ignores a failed prioritize.
// The metrics count the refusal by code either way.
func refuse(w http.ResponseWriter, verb string, code int, msg string) {
	if verb != FilterVerb || code == http.StatusMethodNotAllowed || code == http.StatusUnsupportedMediaType {
		text(w, code, msg)
		return
	}
	b, _ := json.Marshal(extenderv1.ExtenderFilterResult{Error: msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(b)
}

// text answers with a plain-text message.
func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}
