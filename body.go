package conntrace

import (
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/conntrace/conntrace/internal/detect"
)

// body ends its request when the response body reaches EOF, a read fails,
// or it is closed, whichever comes first; or, for a body the caller drops
// without any of these, when the garbage collector finds it unreachable
// (bodyWatch.abandon).
type body struct {
	rc  io.ReadCloser
	req *request // for its progress: bytes read, and whether a Read is in progress
	// w is the body's watch until the body ends its request, then nil: a
	// Read or Close after that, or racing it, finds none, so the watch can
	// serve another body.
	w atomic.Pointer[bodyWatch]
}

// bodyWatch is the object whose finalizer notices an abandoned body. Not
// the body itself: a chunked body's reader points back to its Response
// for the trailers, and so to the body, and a finalizer on an object in a
// cycle may never run. Nothing points to a bodyWatch in use but its body.
//
// Watches are pooled with their finalizer set, once, when made: setting a
// finalizer and clearing it again for every response cost about 1.1k
// instructions, 7% of metrics-only mode (bench/FLOOR.md). A watch goes back to the
// pool when its body has ended its request and let go of it, so nothing
// but the pool holds it; one the pool drops is finalized finding no
// request (abandon does nothing), and freed. (A finalizer rather than
// runtime.AddCleanup: a cleanup must not reach the object it watches, so
// the request would need a second object to live in; pooled, either is
// paid once per watch, not per body: bench/FLOOR.md.)
type bodyWatch struct {
	req atomic.Pointer[request] // nil while pooled, and once the request has ended
}

var bodyWatches = sync.Pool{New: func() any {
	w := new(bodyWatch)
	runtime.SetFinalizer(w, (*bodyWatch).abandon)
	return w
}}

// writableBody keeps the io.Writer of a 101 Switching Protocols body.
type writableBody struct{ body }

func newBody(req *request, rc io.ReadCloser) io.ReadCloser {
	w := bodyWatches.Get().(*bodyWatch)
	w.req.Store(req)
	req.progress.body.Store(true)
	if _, ok := rc.(io.ReadWriteCloser); ok {
		wb := &writableBody{body{rc: rc, req: req}}
		wb.w.Store(w)
		return wb
	}
	b := &body{rc: rc, req: req}
	b.w.Store(w)
	return b
}

// end ends the request, once: the body ended as how says. The first call
// takes the body's watch, and puts it back in the pool once the request
// has ended; a body ended this way leaves the garbage collector nothing to
// run.
func (b *body) end(how detect.BodyEnd, err error) {
	w := b.w.Swap(nil)
	if w == nil {
		return
	}
	if req := w.req.Swap(nil); req != nil {
		req.end(how, req.progress.n.Load(), err)
	}
	bodyWatches.Put(w)
}

// abandon ends the request of a body dropped unclosed before EOF. The
// runtime calls it once the body is unreachable, so no Read or Close can
// race it, on the goroutine that runs every finalizer of the process: the
// ending, which may export the span or call the AlertHandler, gets a
// goroutine of its own.
func (w *bodyWatch) abandon() {
	if req := w.req.Swap(nil); req != nil {
		go req.end(detect.BodyAbandoned, req.progress.n.Load(), nil)
	}
}

func (b *body) Read(p []byte) (int, error) {
	pr := &b.req.progress
	pr.reading.Store(true)
	n, err := b.rc.Read(p)
	pr.reading.Store(false)
	pr.n.Add(int64(n))
	switch err {
	case nil:
	case io.EOF:
		b.end(detect.BodyEOF, nil)
	default:
		if b.w.Load() != nil {
			err = b.req.stalledError(err) // WithCloseDeadConnections closed it under the wait (streams.go)
		}
		b.end(detect.BodyError, err)
	}
	return n, err
}

// Close ends the request before closing the body, because Close may block
// (an upgraded stream, a custom transport's body).
func (b *body) Close() error {
	b.end(detect.BodyClosed, nil)
	return b.rc.Close()
}

func (b *writableBody) Write(p []byte) (int, error) {
	return b.rc.(io.Writer).Write(p)
}
