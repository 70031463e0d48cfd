package detect_test

import (
	"fmt"
	"net"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// A request is sent on a pooled connection that sat idle for 400s, longer
// than the 350s NAT idle timeout, where the kernel cannot be read. StaleReuse
// asks to be woken after the hang timeout; no response has come by then, so
// it raises a hang alert.
func ExampleStaleReuse_Observe() {
	d := &detect.StaleReuse{} // defaults: 350s NAT idle timeout, 10s hang timeout
	sent := time.Date(2024, time.March, 1, 12, 0, 0, 0, time.UTC)
	tl := &detect.Timeline{
		Host:   "api.example.com",
		Port:   443,
		Method: "GET",
		Start:  sent.Add(-time.Millisecond),
		Conns: []detect.Conn{{
			At:         sent,
			Reused:     true,
			WasIdle:    true,
			IdleTime:   400 * time.Second,
			RemoteAddr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 443},
		}},
	}

	_, wake := d.Observe(sent, detect.StepGotConn, tl)
	fmt.Println("wake after:", wake)

	alerts, _ := d.Observe(sent.Add(wake), detect.StepTimer, tl)
	for _, a := range alerts {
		fmt.Println(a.Detector, a.Outcome, a.Level)
		fmt.Println("idle:", a.IdleTime, "threshold:", a.Threshold, "waited:", a.Waited)
		fmt.Println(a.Message)
	}
	// Output:
	// wake after: 10s
	// stale_reuse hang ERROR
	// idle: 6m40s threshold: 5m50s waited: 10s
	// GET api.example.com:443 reused a connection (to 10.0.0.7:443) that had sat idle 6m40s (NAT idle timeout: 5m50s), and has had no response for 10s since the request was sent on it: a NAT or firewall on the path has most likely forgotten the connection and drops its packets silently, so the request will hang until its deadline
}
