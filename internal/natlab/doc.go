// Package natlab holds the real-kernel NAT lab's tests: conntrace's client
// in one network namespace, a Go server in another, and between them a
// Linux router whose conntrack forgets idle flows after a few seconds.
//
// TestNATLab proves detection and both cures; TestNATLabProbe runs the
// engine of `conntrace probe` (internal/probe) against the router and
// checks that the bracket it reports holds the conntrack timeout, and that
// the settings it advises cure the hang.
//
// The tests run only when scripts/natlab.sh drives them (it builds the
// namespaces, needs root, and sets CONNTRACE_NATLAB_SERVER); under a plain
// go test they skip with one line saying so.
//
//	sudo scripts/natlab.sh run     # the tests
//	sudo scripts/natlab.sh probe   # the conntrace probe command itself
package natlab
