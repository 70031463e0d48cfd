package natsim

import "sync"

// flowSet is the set of live flows that a Proxy or a Network must close when
// it is closed. Its mu also guards the owner's other bookkeeping.
type flowSet struct {
	mu     sync.Mutex
	closed bool
	flows  map[*Flow]struct{}
}

// addLocked adds f and reports true, or reports false once closeAll has run.
// s.mu must be held.
func (s *flowSet) addLocked(f *Flow) bool {
	if s.closed {
		return false
	}
	if s.flows == nil {
		s.flows = make(map[*Flow]struct{})
	}
	s.flows[f] = struct{}{}
	return true
}

// removeLocked forgets f. s.mu must be held.
func (s *flowSet) removeLocked(f *Flow) { delete(s.flows, f) }

// closeAll refuses new flows, then closes every live one and waits for it.
func (s *flowSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	flows := make([]*Flow, 0, len(s.flows))
	for f := range s.flows {
		flows = append(flows, f)
	}
	s.mu.Unlock()
	// Not under s.mu: a flow's onDone takes s.mu before Done is closed.
	for _, f := range flows {
		f.Close()
	}
}
