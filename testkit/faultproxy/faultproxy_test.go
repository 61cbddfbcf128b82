package faultproxy

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// echo is a line server that answers each line with name and the line.
func echo(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(name + ":" + line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

type client struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c, bufio.NewReader(c)}
}

// ask sends a line and waits up to wait for the answer.
func (c *client) ask(line string, wait time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

func mustAnswer(t *testing.T, c *client, want string) {
	t.Helper()
	got, err := c.ask("hi", 5*time.Second)
	if err != nil || got != want+":hi" {
		t.Fatalf("answer %q (%v), want %q", got, err, want+":hi")
	}
}

// mustBeClosed: the connection ends at once (end of stream or a reset),
// not by the client's own deadline.
func mustBeClosed(t *testing.T, c *client, what string) {
	t.Helper()
	if _, err := c.ask("hi", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: %v, want it closed", what, err)
	}
}

func TestCutClosesOpenConnectionsAndRefusesNewOnesUntilRestore(t *testing.T) {
	p := Start(t, echo(t, "a"))
	open := dial(t, p.Addr)
	mustAnswer(t, open, "a")

	p.Cut()
	mustBeClosed(t, open, "open connection after Cut")
	mustBeClosed(t, dial(t, p.Addr), "new connection after Cut")

	p.Restore()
	mustAnswer(t, dial(t, p.Addr), "a")
}

func TestSwitchSendsNewConnectionsToTheNewTargetAndSilencesOldOnes(t *testing.T) {
	p := Start(t, echo(t, "old"))
	old := dial(t, p.Addr)
	mustAnswer(t, old, "old")

	p.Switch(echo(t, "new"))
	mustAnswer(t, dial(t, p.Addr), "new")
	// The old connection neither answers nor ends: only the client's own
	// deadline tells it something is wrong.
	got, err := old.ask("hi", 500*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("old connection after Switch: %q, %v; want no answer until the deadline", got, err)
	}
}
