// Minimal caBLE relay on gorilla/websocket: a reference point for the relay benchmark, not a
// production relay. It is what an operator would write in an afternoon: net/http, one
// goroutine reading each side of a tunnel (the HTTP handler's own), writes to a peer made from the
// other side's reader under a per-connection mutex. It implements the subset the benchmark
// drives: /cable/new/<tid> (routing ID in X-caBLE-Routing-ID), /cable/connect/<rid>/<tid>, the
// fido.cable subprotocol, binary forwarding both ways and close propagation. No TTLs, quotas or
// contact tunnels.
//
// usage: relay [--host 127.0.0.1] [--port 0]
// Logs one JSON line {"event": "listening", "port": P} on stderr once it accepts connections.
// Built offline by bench/relays.py from Debian's golang-github-gorilla-websocket-dev (GOPATH mode).
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

const (
	subprotocol = "fido.cable"
	maxBuffered = 6
	maxMessage  = 1 << 20
)

var (
	newRE     = regexp.MustCompile(`^/cable/new/([0-9A-Fa-f]{32})$`)
	connectRE = regexp.MustCompile(`^/cable/connect/([0-9A-Fa-f]{6})/([0-9A-Fa-f]{32})$`)
	routingID string
	upgrader  = websocket.Upgrader{
		Subprotocols: []string{subprotocol},
		CheckOrigin:  func(*http.Request) bool { return true },
	}
	mu      sync.Mutex
	pending = map[string]*tunnel{}
)

// side is one WebSocket of a tunnel; wmu serialises writes into it (gorilla allows one writer).
type side struct {
	ws  *websocket.Conn
	wmu sync.Mutex
}

func (s *side) send(data []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.ws.WriteMessage(websocket.BinaryMessage, data)
}

func (s *side) closeWith(code int) {
	msg := websocket.FormatCloseMessage(code, "")
	_ = s.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
}

// tunnel is created by /cable/new and joined by /cable/connect; fields under mu.
type tunnel struct {
	phone    *side
	desktop  *side
	buffered [][]byte
	closed   bool
	ready    chan struct{} // closed once phone is set (or the phone's upgrade failed)
}

func offered(r *http.Request) bool {
	for _, header := range r.Header.Values("Sec-Websocket-Protocol") {
		for _, p := range strings.Split(header, ",") {
			if strings.TrimSpace(p) == subprotocol {
				return true
			}
		}
	}
	return false
}

// pump forwards binary messages from src to dst until src ends, then closes dst the same way.
func pump(src, dst *side) {
	for {
		kind, data, err := src.ws.ReadMessage()
		if err != nil {
			code := websocket.CloseGoingAway
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code == websocket.CloseNormalClosure {
				code = websocket.CloseNormalClosure
			}
			dst.closeWith(code)
			return
		}
		if kind != websocket.BinaryMessage {
			src.closeWith(websocket.CloseUnsupportedData)
			dst.closeWith(websocket.CloseGoingAway)
			return
		}
		if dst.send(data) != nil {
			src.closeWith(websocket.CloseGoingAway)
			return
		}
	}
}

func handleNew(w http.ResponseWriter, r *http.Request, tid string) {
	// Registered before the upgrade: the client may dial /connect as soon as it reads the 101,
	// before Upgrade returns here. The joiner waits on ready for the phone's side to exist.
	t := &tunnel{ready: make(chan struct{})}
	mu.Lock()
	if _, exists := pending[tid]; exists {
		mu.Unlock()
		http.Error(w, "tunnel exists", http.StatusConflict)
		return
	}
	pending[tid] = t
	mu.Unlock()
	header := http.Header{"X-Cable-Routing-Id": []string{routingID}}
	ws, err := upgrader.Upgrade(w, r, header)
	if err != nil {
		mu.Lock()
		t.closed = true
		if pending[tid] == t {
			delete(pending, tid)
		}
		mu.Unlock()
		close(t.ready)
		return
	}
	defer ws.Close()
	ws.SetReadLimit(maxMessage)
	t.phone = &side{ws: ws}
	close(t.ready)
	// Until the desktop joins, keep a few early messages; after that this goroutine forwards.
	for {
		kind, data, err := ws.ReadMessage()
		mu.Lock()
		peer := t.desktop
		if err != nil || peer == nil && (kind != websocket.BinaryMessage || len(t.buffered) >= maxBuffered) {
			t.closed = true
			if pending[tid] == t {
				delete(pending, tid)
			}
			mu.Unlock()
			if err == nil {
				t.phone.closeWith(websocket.ClosePolicyViolation)
			} else if peer != nil {
				code := websocket.CloseGoingAway
				var ce *websocket.CloseError
				if errors.As(err, &ce) && ce.Code == websocket.CloseNormalClosure {
					code = websocket.CloseNormalClosure
				}
				peer.closeWith(code)
			}
			return
		}
		if peer == nil {
			t.buffered = append(t.buffered, data)
			mu.Unlock()
			continue
		}
		mu.Unlock()
		if kind != websocket.BinaryMessage {
			t.phone.closeWith(websocket.CloseUnsupportedData)
			peer.closeWith(websocket.CloseGoingAway)
			return
		}
		if peer.send(data) != nil {
			t.phone.closeWith(websocket.CloseGoingAway)
			return
		}
		// Paired: the rest of the phone's messages need no tunnel lookup.
		pump(t.phone, peer)
		return
	}
}

func handleConnect(w http.ResponseWriter, r *http.Request, tid string) {
	mu.Lock()
	t := pending[tid]
	if t != nil {
		delete(pending, tid)
	}
	mu.Unlock()
	if t == nil {
		http.Error(w, "no such tunnel", http.StatusNotFound)
		return
	}
	<-t.ready
	if t.phone == nil {
		http.Error(w, "no such tunnel", http.StatusNotFound)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		mu.Lock()
		t.closed = true
		mu.Unlock()
		t.phone.closeWith(websocket.CloseGoingAway)
		return
	}
	defer ws.Close()
	ws.SetReadLimit(maxMessage)
	desktop := &side{ws: ws}
	// Hold the desktop's write lock while publishing it, so the phone's reader cannot overtake
	// the early messages being flushed.
	desktop.wmu.Lock()
	mu.Lock()
	if t.closed {
		mu.Unlock()
		desktop.wmu.Unlock()
		desktop.closeWith(websocket.CloseGoingAway)
		return
	}
	t.desktop = desktop
	early := t.buffered
	t.buffered = nil
	mu.Unlock()
	for _, msg := range early {
		if ws.WriteMessage(websocket.BinaryMessage, msg) != nil {
			break
		}
	}
	desktop.wmu.Unlock()
	pump(desktop, t.phone)
}

func handle(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !offered(r) {
		http.Error(w, "missing fido.cable subprotocol", http.StatusBadRequest)
		return
	}
	if m := newRE.FindStringSubmatch(r.URL.Path); m != nil {
		handleNew(w, r, strings.ToUpper(m[1]))
		return
	}
	if m := connectRE.FindStringSubmatch(r.URL.Path); m != nil {
		handleConnect(w, r, strings.ToUpper(m[2]))
		return
	}
	http.NotFound(w, r)
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port to listen on (0: any free port)")
	flag.Parse()
	rid := make([]byte, 3)
	if _, err := rand.Read(rid); err != nil {
		fmt.Fprintln(os.Stderr, "relay: cannot draw a routing ID:", err)
		os.Exit(1)
	}
	routingID = strings.ToUpper(hex.EncodeToString(rid))
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay: cannot listen:", err)
		os.Exit(1)
	}
	line, _ := json.Marshal(map[string]any{
		"event": "listening",
		"host":  *host,
		"port":  ln.Addr().(*net.TCPAddr).Port,
	})
	fmt.Fprintln(os.Stderr, string(line))
	server := &http.Server{Handler: http.HandlerFunc(handle), ReadHeaderTimeout: 10 * time.Second}
	if err := server.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}
