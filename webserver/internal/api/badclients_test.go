package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/servicekit/lifecycle"
	"github.com/purchase-system/purchase-system/webserver/internal/api"
)

// TestBadClientsGetA4xxOrAClosedConnectionAndLeaveNothingBehind serves the
// API as the binary does (lifecycle's server, with its timeouts shortened)
// and sends it what a hostile or broken client would: requests that
// trickle in or stop half-way, bodies far over the limit, endless chunked
// bodies, huge headers, connections opened and abandoned. Each gets a clear
// 4xx or, when it never finishes sending, a closed connection; nothing is
// published; and once the clients are gone no goroutine is left behind.
func TestBadClientsGetA4xxOrAClosedConnectionAndLeaveNothingBehind(t *testing.T) {
	pub := &recordingPublisher{}
	h := api.NewServer(api.Deps{
		Publisher: pub, Customers: &claims{}, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- lifecycle.ServeWith(ctx, ln, h, slog.New(slog.NewTextHandler(io.Discard, nil)),
			lifecycle.Timeouts{ReadHeader: 300 * time.Millisecond, Read: 600 * time.Millisecond, Write: time.Second, Idle: time.Second})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}()
	waitForGoroutines := func(limit int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > limit {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), limit, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(100 * time.Millisecond)
	baseline := runtime.NumGoroutine()

	// send writes raw bytes, then reads until the server answers or closes.
	send := func(t *testing.T, parts ...string) (status int, body string) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // the test's own bound, far above the server's
		for _, p := range parts {
			if strings.HasPrefix(p, "sleep:") {
				d, _ := time.ParseDuration(strings.TrimPrefix(p, "sleep:"))
				time.Sleep(d)
				continue
			}
			if _, err := io.WriteString(c, p); err != nil {
				break // the server already gave up on us: fine
			}
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the server neither answered nor closed the connection")
			}
			return 0, "" // closed without an answer
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(headers string) string {
		return "POST /buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers + "\r\n"
	}
	// postBody is a whole request with a truthful Content-Length.
	postBody := func(body string) string {
		return post(fmt.Sprintf("Content-Length: %d\r\n", len(body))) + body
	}
	valid := `{"username":"a","userid":"b","price":1}`

	for _, tt := range []struct {
		name   string
		parts  []string
		status int // 0: the connection is closed without an answer
		says   string
	}{
		{"headers trickle in and stop", []string{"POST /buy HTTP/1.1\r\nHo", "sleep:200ms", "st: x\r\n", "sleep:1s"}, 0, ""},
		{"body stops half-way", []string{post("Content-Length: 39\r\n"), `{"username":"a",`, "sleep:1.5s"}, 408, "request body not received in time"},
		{"body over the limit", []string{post("Content-Length: 10000000\r\n"), `{"username":"` + strings.Repeat("a", 70<<10)}, 413, "larger than 64 KiB"},
		{"endless chunked body", []string{post("Transfer-Encoding: chunked\r\n"), strings.Repeat("1000\r\n"+strings.Repeat(" ", 0x1000)+"\r\n", 20)}, 413, "larger than 64 KiB"},
		{"huge header", []string{"POST /buy HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 2<<20) + "\r\n\r\n"}, 431, ""},
		{"body shorter than its length", []string{post("Content-Length: 100\r\n"), valid, "sleep:1.5s"}, 408, "request body not received in time"},
		{"body longer than its length", []string{post("Content-Length: 10\r\n"), valid}, 400, "malformed JSON"},
		{"invalid UTF-8", []string{postBody("{\"username\":\"\xff\",\"userid\":\"b\",\"price\":1}")}, 400, "not valid UTF-8"},
		{"price beyond float64", []string{postBody(`{"username":"a","userid":"b","price":1e999}`)}, 400, "price: number out of range"},
		{"price as a huge integer", []string{postBody(`{"username":"a","userid":"b","price":` + strings.Repeat("9", 400) + `}`)}, 400, "price: number out of range"},
		{"deeply nested JSON", []string{postBody(strings.Repeat("[", 10000) + strings.Repeat("]", 10000))}, 400, "expected a JSON object"},
		{"unicode line separator in a name", []string{postBody("{\"username\":\"a\u2028\",\"userid\":\"b\",\"price\":1}")}, 400, "printable"},
		{"unknown path", []string{"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"}, 404, "no such endpoint: /admin"},
		{"unknown method", []string{"BREW /buy HTTP/1.1\r\nHost: x\r\n\r\n"}, 405, `/buy takes POST, not \"BREW\"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body := send(t, tt.parts...)
			if status != tt.status || !strings.Contains(body, tt.says) {
				t.Fatalf("= %d %q, want %d saying %q", status, body, tt.status, tt.says)
			}
			if status >= 400 && status != 431 && !strings.Contains(body, `"error"`) {
				t.Fatalf("%d without a JSON error: %q", status, body)
			}
		})
	}
	if len(pub.published) != 0 {
		t.Fatalf("bad requests were published: %+v", pub.published)
	}

	// A hundred connections opened and abandoned, some mid-request.
	var conns []net.Conn
	for i := range 100 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			_, _ = io.WriteString(c, post("Content-Length: 39\r\n")+`{"user`)
		}
		conns = append(conns, c)
	}
	// The server closes them all by its timeouts, while they are still
	// open on the client side: its goroutines do not wait for us.
	waitForGoroutines(baseline + 5)
	for _, c := range conns {
		c.Close()
	}
}
