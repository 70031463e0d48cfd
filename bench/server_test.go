package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// envURL names a server started outside, such as by callgrind.sh, which
// keeps it out from under valgrind. Without it, the first benchmark that
// needs a server starts one.
const envURL = "CONNTRACE_BENCH_URL"

// readyPrefix starts the line on which the server process gives its URL.
const readyPrefix = "conntrace-bench-server "

// serve is the server process: an HTTP/1.1 server on loopback that answers
// every request with a 5-byte body and keeps connections alive, idle for
// as long as the client keeps them. It prints
// its URL, then serves until its standard input ends, which happens when
// the process that started it closes the pipe or exits, even by a crash.
func serve() int {
	// Room for a connection per server of the many-server variants.
	if err := raiseFileLimit(0); err != nil {
		fmt.Fprintf(os.Stderr, "bench server: %v\n", err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench server: %v\n", err)
		return 1
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(hello),
		ReadHeaderTimeout: time.Minute,
	}
	go srv.Serve(ln)
	fmt.Printf("%shttp://%s/\n", readyPrefix, ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func hello(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "hello")
}

// server is the server process this process started, if any.
var server struct {
	once  sync.Once
	cmd   *exec.Cmd
	stdin io.Closer
	url   string
	err   error
}

// serverURL returns the URL of the benchmark server: the one named by
// CONNTRACE_BENCH_URL, or else one this test binary starts in a child
// process, once, and stops when the tests end.
func serverURL(tb testing.TB) string {
	tb.Helper()
	u, err := startServer()
	if err != nil {
		tb.Fatalf("benchmark server: %v", err)
	}
	return u
}

func startServer() (string, error) {
	if u := os.Getenv(envURL); u != "" {
		return u, nil
	}
	server.once.Do(func() { server.url, server.err = spawnServer() })
	return server.url, server.err
}

func spawnServer() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envServe+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	u, ok := strings.CutPrefix(strings.TrimSpace(line), readyPrefix)
	if !ok {
		stdin.Close()
		cmd.Wait()
		return "", errors.Join(fmt.Errorf("server process said %q, not its URL", line), err)
	}
	server.cmd, server.stdin = cmd, stdin
	return u, nil
}

// stopServer ends the server process, if this process started one.
func stopServer() {
	if server.cmd == nil {
		return
	}
	server.stdin.Close()
	if err := server.cmd.Wait(); err != nil {
		fmt.Fprintf(os.Stderr, "bench server: %v\n", err)
	}
	server.cmd = nil
}
