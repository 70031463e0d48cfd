// This file holds the stream watcher: what notices, while it waits, a
// request whose connection a NAT forgot during a stream's pause or a long
// poll (the stream_stall detector, internal/detect/stream_stall.go).

package conntrace

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

// Nothing runs on a request while it waits for data: its goroutine is
// blocked in a read. So a request joins its Transport's stream watcher
// when it is handed a connection (a slot in a lock-free table, taken and
// given back with one compare-and-swap each: no lock, no timer, no
// goroutine, no allocation of its own), and leaves it when it ends. One
// timer per Transport, armed when a request joins an idle table (so at
// most once a second under steady traffic), looks over the table on its
// own goroutine, and arms itself again while the table holds a request:
// at most once a second for most, sooner only for a stream whose verdict
// is due. A request answered within a second is never looked at closely;
// one that waits longer with nothing for its caller costs one TCP_INFO
// reading (about a microsecond) per second at most, fewer as the time to a
// decision grows. With nothing in flight, nothing runs.

// watcher is a Transport's stream watcher.
type watcher struct {
	grow    sync.Mutex // held only to add a block to the table
	blocks  [maxBlocks]atomic.Pointer[slotBlock]
	nblocks atomic.Int32
	// free is the stack of free slots: the version in the high 32 bits
	// (against ABA), the slot's index + 1 in the low 32 bits, 0 if empty.
	free  atomic.Uint64
	armed atomic.Bool // a look is scheduled, or running
	stall *detect.StreamStall
	// socks holds the sockets the watcher changed, by connection: locked
	// only to probe a waiting request or put its socket back, never on an
	// ordinary request's path.
	socksMu sync.Mutex
	socks   map[net.Conn]*streamSocket
}

const (
	blockSize = 256
	maxBlocks = 4096 // a million requests waiting at once; past that, new ones are not watched
)

type slotBlock [blockSize]slot

type slot struct {
	req  atomic.Pointer[request]
	next atomic.Uint32 // the next free slot's index + 1, while free
}

func (w *watcher) slot(i uint32) *slot {
	return &w.blocks[i/blockSize].Load()[i%blockSize]
}

// join puts req in a free slot and returns its index + 1, or 0 if the
// table is full. It starts the watcher goroutine if none runs.
func (w *watcher) join(req *request) uint32 {
	i, ok := w.pop()
	if !ok {
		if i, ok = w.addBlock(); !ok {
			return 0
		}
	}
	w.slot(i).req.Store(req)
	if !w.armed.Load() && w.armed.CompareAndSwap(false, true) {
		time.AfterFunc(lookEvery, w.tick)
	}
	return i + 1
}

// leave frees the slot join returned.
func (w *watcher) leave(id uint32) {
	if id == 0 {
		return
	}
	w.slot(id - 1).req.Store(nil)
	w.push(id)
}

// push puts the slot with index id - 1 on the free stack.
func (w *watcher) push(id uint32) {
	s := w.slot(id - 1)
	for {
		h := w.free.Load()
		s.next.Store(uint32(h))
		if w.free.CompareAndSwap(h, (h>>32+1)<<32|uint64(id)) {
			return
		}
	}
}

func (w *watcher) pop() (uint32, bool) {
	for {
		h := w.free.Load()
		top := uint32(h)
		if top == 0 {
			return 0, false
		}
		next := w.slot(top - 1).next.Load()
		if w.free.CompareAndSwap(h, (h>>32+1)<<32|uint64(next)) {
			return top - 1, true
		}
	}
}

// addBlock adds a block to the table, keeps its first slot for the
// caller and frees the others.
func (w *watcher) addBlock() (uint32, bool) {
	w.grow.Lock()
	defer w.grow.Unlock()
	if i, ok := w.pop(); ok { // another grew it meanwhile
		return i, true
	}
	n := w.nblocks.Load()
	if n == maxBlocks {
		return 0, false
	}
	w.blocks[n].Store(new(slotBlock))
	w.nblocks.Store(n + 1)
	base := uint32(n) * blockSize
	for i := blockSize - 1; i >= 1; i-- {
		w.push(base + uint32(i) + 1)
	}
	return base, true
}

// Looks: how often the watcher goroutine wakes, at most and at least.
const (
	lookEvery = time.Second
	lookSoon  = 50 * time.Millisecond
)

// tick looks at the table, on the timer's goroutine, and schedules the
// next look while a request is in it; else it disarms, unless a request
// joined meanwhile.
func (w *watcher) tick() {
	now := time.Now()
	next, any := w.look(now)
	if !any {
		w.armed.Store(false)
		if !w.occupied() || !w.armed.CompareAndSwap(false, true) {
			return
		}
		next = now.Add(lookEvery)
	}
	time.AfterFunc(min(max(next.Sub(now), lookSoon), lookEvery), w.tick)
}

// look looks at every request in the table, each whose turn has come, and
// returns when the next one's turn comes.
func (w *watcher) look(now time.Time) (next time.Time, any bool) {
	next = now.Add(lookEvery)
	n := w.nblocks.Load()
	for b := range n {
		blk := w.blocks[b].Load()
		for i := range blk {
			req := blk[i].req.Load()
			if req == nil {
				continue
			}
			any = true
			if req.wait == nil {
				req.wait = new(streamWait) // the first look: only a request in flight at a tick pays it
			}
			if due := req.wait.look(req, now); due.Before(next) {
				next = due
			}
		}
	}
	return next, any
}

func (w *watcher) occupied() bool {
	for b := range w.nblocks.Load() {
		blk := w.blocks[b].Load()
		for i := range blk {
			if blk[i].req.Load() != nil {
				return true
			}
		}
	}
	return false
}

// streamProgress is how far the caller has read the response body: what
// tells the watcher a request waits (body.go updates it).
type streamProgress struct {
	body    atomic.Bool  // the response, with a body, was returned: no longer waiting for headers
	reading atomic.Bool  // a Read is in progress: the caller waits for bytes
	n       atomic.Int64 // bytes read
	// upgraded: a 101 Switching Protocols response: the connection is the
	// caller's (a WebSocket), with pings of its own; not watched.
	upgraded atomic.Bool
}

// streamWait is what the watcher keeps of one request. Only the watcher
// timer's look touches it (one look at a time: a look schedules the next
// when it is done, and a join arms the timer only once a look has
// disarmed it).
type streamWait struct {
	conn       net.Conn // the connection the rest is about
	kernel     bool     // its socket's TCP_INFO can be read (Linux)
	headers    bool     // the phase last seen: waiting for headers
	marker     int64    // body bytes read when last seen
	quietSince time.Time
	due        time.Time
	probe      detect.Probe
	probing    bool
	keptAlive  bool
	every      time.Duration
	stopped    bool
}

// look is the watcher's look at req, at now: it returns when to look again.
func (ws *streamWait) look(req *request, now time.Time) time.Time {
	if ws.stopped || now.Before(ws.due) {
		return ws.due
	}
	p := &req.progress
	if p.upgraded.Load() {
		ws.stopped = true
		return now.Add(lookEvery)
	}
	headers := !p.body.Load()
	if !headers && !p.reading.Load() {
		// The caller is not reading: nothing waits.
		ws.quietSince, ws.due = time.Time{}, now.Add(detect.StreamGate)
		return ws.due
	}
	var marker int64
	if !headers {
		marker = p.n.Load()
	}
	if ws.quietSince.IsZero() || headers != ws.headers || marker != ws.marker {
		ws.quietSince, ws.headers, ws.marker = now, headers, marker
		ws.due = now.Add(detect.StreamGate)
		return ws.due
	}

	req.mu.Lock()
	if req.ended.Load() {
		req.mu.Unlock()
		ws.stopped = true
		return now.Add(lookEvery)
	}
	conn := req.conn
	wait := detect.Wait{Host: req.tl.Host, Port: req.tl.Port, Method: req.tl.Method, Headers: headers, Stale: staleHang(req.tl.Alerts)}
	if c := req.tl.Conn(); c != nil {
		wait.RemoteAddr = c.RemoteAddr
	}
	req.mu.Unlock()
	if conn == nil {
		ws.due = now.Add(lookEvery)
		return ws.due
	}
	if conn != ws.conn {
		// A first look, or the request moved to another connection.
		if ws.conn != nil {
			req.restoreSocket()
		}
		*ws = streamWait{conn: conn, headers: headers, marker: marker, quietSince: ws.quietSince, kernel: sockopt.Kernel(conn)}
	}
	wait.Quiet = now.Sub(ws.quietSince)
	// The reading's own time, not the look's: a look over many waits takes
	// a while, and a probe's verdict compares the reading with the moment
	// the probe was turned on.
	read := time.Now()
	wait.TCP = sockopt.TCPInfo(conn, read)
	if wait.TCP == nil && ws.kernel {
		// The socket is there but cannot be read: closed under the wait,
		// which is about to fail by itself. No fallback verdict on it.
		ws.due = now.Add(lookEvery)
		return ws.due
	}
	wait.HTTP2 = isHTTP2(conn)
	if ws.probing {
		wait.Probe = &ws.probe
	}
	wait.KeptAlive, wait.KeepAliveEvery = ws.keptAlive, ws.every
	dec := req.t.streams.stall.Check(read, &wait)

	if dec.Judged {
		ws.probing = false
	}
	silence := time.Duration(0)
	if wait.TCP != nil {
		silence = min(wait.TCP.LastDataRecv, wait.TCP.LastAckRecv)
	}
	switch dec.Act {
	case detect.ActProbe, detect.ActKeepAlive:
		opts := detect.SocketOptions{KeepAlive: true, Idle: time.Second, Interval: time.Second}
		if dec.Act == detect.ActKeepAlive {
			opts.Idle, opts.Interval = dec.Every, dec.Every
		} else if ws.probing && ws.keptAlive {
			// The cure's first probe, sent again: its own period, which
			// the silence already exceeds, so the probe leaves at once.
			opts.Idle, opts.Interval = ws.every, ws.every
		}
		if !req.setKeepAlive(conn, opts) {
			ws.stopped = true // a socket whose options cannot be read and put back is not touched
			return now.Add(lookEvery)
		}
		// When the options were set, not when the look began: the probe
		// leaves then, and its answer is looked for after that.
		if ws.probing && dec.Act == detect.ActProbe {
			ws.probe.At, ws.probe.Again = time.Now(), true // the second probe: Silence is the first's
		} else {
			ws.probe, ws.probing = detect.Probe{At: time.Now(), Silence: silence}, true
		}
		if dec.Act == detect.ActKeepAlive {
			ws.keptAlive, ws.every = true, dec.Every
		}
	case detect.ActRestore:
		req.restoreSocket()
	case detect.ActStop, detect.ActClose:
		ws.stopped = true
		if dec.Act == detect.ActStop {
			req.restoreSocket()
		}
	}
	if dec.Alert != nil {
		req.raiseStall(*dec.Alert)
	}
	if dec.Act == detect.ActClose {
		req.closeStalled(conn, *dec.Alert)
	}
	ws.due = read.Add(dec.Next)
	return ws.due
}

// isHTTP2 reports whether conn carries HTTP/2: a TLS connection that
// negotiated h2.
func isHTTP2(conn net.Conn) bool {
	tc, ok := sockopt.Find[*tls.Conn](conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

// streamSocket is what the watcher changed on a socket, to be put back,
// and how many waiting requests rely on the change: on an HTTP/2
// connection several streams may be probed at once, and the options to put
// back are those read before the first change, put back after the last
// request is done with it. Guarded by watcher.socksMu; a request holds one
// (request.sock, under request.mu) while it relies on it.
type streamSocket struct {
	conn  net.Conn
	orig  detect.SocketOptions
	users int
}

// setKeepAlive turns keep-alive on conn with opts, first reading what to
// put back, unless the request has ended. It reports whether it did.
func (req *request) setKeepAlive(conn net.Conn, opts detect.SocketOptions) bool {
	req.mu.Lock()
	defer req.mu.Unlock()
	if req.ended.Load() {
		return false
	}
	w := &req.t.streams
	w.socksMu.Lock()
	defer w.socksMu.Unlock()
	if req.sock == nil || req.sock.conn != conn {
		ss := w.socks[conn]
		if ss == nil {
			orig := sockopt.Options(conn)
			if !orig.Known {
				return false
			}
			ss = &streamSocket{conn: conn, orig: orig}
			if w.socks == nil {
				w.socks = make(map[net.Conn]*streamSocket)
			}
			w.socks[conn] = ss
		}
		ss.users++
		req.sock = ss
	}
	return sockopt.SetKeepAlive(conn, opts) == nil
}

// restoreSocket puts back what the watcher changed on the request's
// socket, once no other request relies on it, so that a connection
// returned to the pool is as the caller configured it.
func (req *request) restoreSocket() {
	req.mu.Lock()
	req.restoreSocketLocked()
	req.mu.Unlock()
}

func (req *request) restoreSocketLocked() {
	ss := req.sock
	if ss == nil {
		return
	}
	req.sock = nil
	w := &req.t.streams
	w.socksMu.Lock()
	defer w.socksMu.Unlock()
	if ss.users--; ss.users > 0 {
		return
	}
	delete(w.socks, ss.conn)
	_ = sockopt.SetKeepAlive(ss.conn, ss.orig) // fails only on a closed socket: nothing to put back
}

// raiseStall records a stream_stall alert on the request's timeline and
// span (noteAlerts, as observe does a detector's), and raises it.
func (req *request) raiseStall(a detectors.Alert) {
	req.mu.Lock()
	if req.ended.Load() {
		req.mu.Unlock()
		return
	}
	req.noteAlerts([]detectors.Alert{a})
	req.mu.Unlock()
	req.raise([]detectors.Alert{a})
}

// closeStalled closes conn, which the kernel showed dead under a waiting
// request, for WithCloseDeadConnections: the wait fails now, with an error
// that wraps ErrDeadConnection (resendAfterClose, body.Read).
func (req *request) closeStalled(conn net.Conn, a detectors.Alert) {
	req.mu.Lock()
	if req.ended.Load() || req.conn != conn {
		req.mu.Unlock()
		return
	}
	req.closed = &deadClose{conn: len(req.tl.Conns) - 1, alert: a}
	req.restoreSocketLocked() // before the close: put back, or left to the other streams relying on it
	req.event(vocab.EventClosedDead, vocab.AttrWireIdle.Float64(a.WireIdle.Seconds()))
	req.mu.Unlock()
	req.count(req.spanCtx, req.t.inst.closedDead)
	// The socket, not a *tls.Conn, whose Close writes an alert first.
	if sock, ok := sockopt.Find[*net.TCPConn](conn); ok {
		_ = sock.Close()
	} else {
		_ = conn.Close()
	}
}

// staleHang reports whether stale_reuse has called the request a hang.
func staleHang(alerts []detectors.Alert) bool {
	for _, a := range alerts {
		if a.Detector == detectors.StaleReuseName && a.Outcome == detectors.OutcomeHang {
			return true
		}
	}
	return false
}
