package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
)

// silentStreams is how many streams TestSilentStreams holds open at once.
const silentStreams = 10_000

// TestSilentStreams measures what many silent streams cost: 10,000 streams
// (each an HTTP/1.1 connection on loopback, one event, then silence) held
// open at once through one Transport, each read by a goroutine blocked in
// Read, as an SSE client or a watch does. It reports, for the bare
// transport and for conntrace (the default NAT idle timeout, 350 s, and a
// 5 s one under which every stream is judged with a keep-alive probe every
// 5.5 s), the heap per stream and the CPU the process spends per second
// while they are all silent: the stream watcher's looks, its TCP_INFO
// readings and its probes.
func TestSilentStreams(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// The server is a process of its own: this one holds the client ends.
	need := uint64(silentStreams + 500)
	if lim.Cur < need {
		lim.Cur = min(max(need, lim.Cur), max(lim.Max, need))
		if lim.Max < need {
			lim.Max = need
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Skipf("needs %d open files (ulimit -n), and raising the limit failed: %v", need, err)
		}
	}
	srv := exec.Command(os.Args[0])
	srv.Env = append(os.Environ(), envSilentServe+"=1")
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the silent streams' server: %v", err)
	}
	addr = strings.TrimSpace(addr)
	url := "http://" + addr + "/stream"
	for _, v := range []struct {
		name string
		rt   func(*http.Transport) http.RoundTripper
	}{
		{"bare", func(b *http.Transport) http.RoundTripper { return b }},
		{"conntrace", func(b *http.Transport) http.RoundTripper {
			return conntrace.NewTransport(b, silentOpts()...)
		}},
		{"conntrace-nat5s", func(b *http.Transport) http.RoundTripper {
			return conntrace.NewTransport(b, append(silentOpts(), conntrace.WithNATIdleTimeout(5*time.Second))...)
		}},
	} {
		base := &http.Transport{DisableCompression: true}
		client := &http.Client{Transport: v.rt(base)}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)

		ctx, cancel := context.WithCancel(context.Background())
		var open atomic.Int64
		var readers sync.WaitGroup
		for range silentStreams {
			readers.Go(func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				res, err := client.Do(req)
				if err != nil {
					open.Add(1)
					t.Errorf("stream: %v", err)
					return
				}
				defer res.Body.Close()
				buf := make([]byte, 64)
				if _, err := res.Body.Read(buf); err != nil {
					t.Errorf("first event: %v", err)
				}
				open.Add(1)
				io.Copy(io.Discard, res.Body) // blocks: the silence
			})
		}
		for open.Load() < silentStreams && !t.Failed() {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second) // every stream past the watcher's first look
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		const window = 6 * time.Second
		cpu0 := cpuTime()
		time.Sleep(window)
		cpu := cpuTime() - cpu0
		t.Logf("STREAMS10K %s: %d silent streams: client heap %.1f KB per stream (goroutine stacks apart; the server is another process); CPU %.2f ms per second of silence (%.1f µs per stream per second)",
			v.name, silentStreams, float64(after.HeapInuse-before.HeapInuse)/silentStreams/1024,
			float64(cpu.Microseconds())/1000/window.Seconds(), float64(cpu.Nanoseconds())/1000/window.Seconds()/silentStreams)
		cancel()
		readers.Wait()
		base.CloseIdleConnections()
		if n := silentAlerts.Swap(0); n != 0 {
			t.Errorf("%s: %d stream_stall alerts on live loopback streams; want none; the first: %v", v.name, n, silentFirst.Load())
		}
	}
}

// silentAlerts counts the stream_stall alerts of TestSilentStreams: its
// streams are alive, so none is expected.
var silentAlerts atomic.Int64

// silentFirst is the first such alert's text, to say why.
var silentFirst atomic.Value

func silentOpts() []conntrace.Option {
	return []conntrace.Option{
		conntrace.WithoutSpans(), conntrace.WithoutAudit(),
		conntrace.WithLogger(slog.New(slog.DiscardHandler)),
		conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			if a.Detector == detectors.StreamStallName {
				silentFirst.CompareAndSwap(nil, a.Outcome+": "+a.Message)
				silentAlerts.Add(1)
			}
		}),
	}
}

// envSilentServe makes the test binary the silent streams' server
// (TestMain).
const envSilentServe = "CONNTRACE_BENCH_SILENT"

// silentServeMain serves silent streams on a loopback port it prints,
// until killed.
func silentServeMain() int {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(ln.Addr())
	done := make(chan struct{})
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go silentServe(c, done)
	}
}

// silentServe answers one request with a chunked stream: one event, then
// nothing until done.
func silentServe(c net.Conn, done chan struct{}) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if line == "\r\n" {
			break
		}
	}
	event := "data: 1\n\n"
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(event), event)
	go func() {
		<-done
		c.Close()
	}()
	io.Copy(io.Discard, c) // until the client closes, or done
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
