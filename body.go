package conntrace

import (
	"io"
	"runtime"
	"sync/atomic"

	"github.com/conntrace/conntrace/internal/detect"
)

// body ends its request when the response body reaches EOF, a read fails,
// or it is closed, whichever comes first; or, for a body the caller drops
// without any of these, when the garbage collector finds it unreachable
// (bodyWatch.abandon).
type body struct {
	rc io.ReadCloser
	w  *bodyWatch
}

// bodyWatch is what a body knows of its request, apart from the body, and
// the object whose finalizer notices an abandoned body. Not the body
// itself: a chunked body's reader points back to its Response for the
// trailers, and so to the body, and a finalizer on an object in a cycle
// may never run. Nothing points to a bodyWatch but its body. (A finalizer
// rather than runtime.AddCleanup: it costs a body that is closed no
// allocation, where AddCleanup costs two.)
type bodyWatch struct {
	req atomic.Pointer[request] // nil once the request has ended
	// p is the request's progress (its streamProgress, inside the
	// request): bytes read, for body_not_drained and the stream watcher,
	// and whether a Read is in progress. It lives in the request, which
	// the stream watcher holds, and not here: the watcher must not keep an
	// abandoned body reachable.
	p *streamProgress
}

// writableBody keeps the io.Writer of a 101 Switching Protocols body.
type writableBody struct{ body }

func newBody(req *request, rc io.ReadCloser) io.ReadCloser {
	w := new(bodyWatch)
	w.req.Store(req)
	w.p = &req.progress
	w.p.body.Store(true)
	runtime.SetFinalizer(w, (*bodyWatch).abandon)
	if _, ok := rc.(io.ReadWriteCloser); ok {
		return &writableBody{body{rc: rc, w: w}}
	}
	return &body{rc: rc, w: w}
}

// end ends the request, once: the body ended as how says. A body ended
// this way leaves the garbage collector nothing to run.
func (w *bodyWatch) end(how detect.BodyEnd, err error) {
	if req := w.req.Swap(nil); req != nil {
		runtime.SetFinalizer(w, nil)
		req.end(how, w.p.n.Load(), err)
	}
}

// abandon ends the request of a body dropped unclosed before EOF. The
// runtime calls it once the body is unreachable, so no Read or Close can
// race it, on the goroutine that runs every finalizer of the process: the
// ending, which may export the span or call the AlertHandler, gets a
// goroutine of its own.
func (w *bodyWatch) abandon() {
	if req := w.req.Swap(nil); req != nil {
		go req.end(detect.BodyAbandoned, w.p.n.Load(), nil)
	}
}

func (b *body) Read(p []byte) (int, error) {
	b.w.p.reading.Store(true)
	n, err := b.rc.Read(p)
	b.w.p.reading.Store(false)
	b.w.p.n.Add(int64(n))
	switch err {
	case nil:
	case io.EOF:
		b.w.end(detect.BodyEOF, nil)
	default:
		if req := b.w.req.Load(); req != nil {
			err = req.stalledError(err) // WithCloseDeadConnections closed it under the wait (streams.go)
		}
		b.w.end(detect.BodyError, err)
	}
	return n, err
}

// Close ends the request before closing the body, because Close may block
// (an upgraded stream, a custom transport's body).
func (b *body) Close() error {
	b.w.end(detect.BodyClosed, nil)
	return b.rc.Close()
}

func (b *writableBody) Write(p []byte) (int, error) {
	return b.rc.(io.Writer).Write(p)
}
