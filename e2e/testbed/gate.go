package testbed

import (
	"context"
	"io"
	"net"
	"sync"
)

// Gate is a TCP relay on loopback that can hold connections back. While
// closed it accepts connections and keeps them waiting, without dialing the
// target; Open lets every held connection, and every later one, through to the
// target. Its methods are safe for concurrent use.
type Gate struct {
	ln     net.Listener
	target string
	open   chan struct{} // closed by Open
	ctx    context.Context
	cancel context.CancelFunc // by Close
	once   sync.Once          // for Open
	wg     sync.WaitGroup     // the accept loop and one per connection

	// mu guards accepted and conns.
	mu       sync.Mutex
	accepted int
	conns    map[net.Conn]bool
}

// NewGate starts a closed Gate on 127.0.0.1:0 in front of target (host:port).
// Close it when done.
func NewGate(target string) (*Gate, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gate{ln: ln, target: target, open: make(chan struct{}), ctx: ctx, cancel: cancel, conns: map[net.Conn]bool{}}
	g.wg.Add(1)
	go g.serve()
	return g, nil
}

// Addr is the address the Gate listens on, 127.0.0.1:PORT.
func (g *Gate) Addr() string { return g.ln.Addr().String() }

// Port is the port the Gate listens on.
func (g *Gate) Port() int { return g.ln.Addr().(*net.TCPAddr).Port }

// Open lets the held connections and every later one through.
func (g *Gate) Open() { g.once.Do(func() { close(g.open) }) }

// Accepted is how many connections the Gate has accepted so far.
func (g *Gate) Accepted() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.accepted
}

// Close stops listening, closes every connection, held or spliced, and waits
// for the Gate's goroutines to end.
func (g *Gate) Close() {
	g.cancel()
	g.ln.Close()
	g.mu.Lock()
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *Gate) serve() {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		g.accepted++
		g.mu.Unlock()
		if !g.track(c) {
			c.Close()
			return
		}
		g.wg.Add(1)
		go g.handle(c)
	}
}

// track records c for Close; it reports false, leaving c untracked, once the
// Gate is closed.
func (g *Gate) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx.Err() != nil {
		return false
	}
	g.conns[c] = true
	return true
}

func (g *Gate) untrack(cs ...net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range cs {
		delete(g.conns, c)
		c.Close()
	}
}

// handle holds c until the Gate opens, then splices it to the target.
func (g *Gate) handle(c net.Conn) {
	defer g.wg.Done()
	select {
	case <-g.open:
	case <-g.ctx.Done():
		g.untrack(c)
		return
	}
	var d net.Dialer
	up, err := d.DialContext(g.ctx, "tcp", g.target)
	if err != nil {
		g.untrack(c)
		return
	}
	if !g.track(up) {
		up.Close()
		g.untrack(c)
		return
	}
	// Each direction is copied until its reader ends, then its writer is
	// half-closed, so that a client that shuts its side down still gets the
	// answer.
	var both sync.WaitGroup
	both.Go(func() { splice(up, c) })
	both.Go(func() { splice(c, up) })
	both.Wait()
	g.untrack(c, up)
}

// splice copies from src to dst, then closes dst for writing; on an error
// (not the end of src) it closes both.
func splice(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
}
