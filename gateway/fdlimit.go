package gateway

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// At the open-file limit the kernel refuses new sockets with EMFILE (or
// ENFILE, system-wide). gliderlabs' accept loop treats that as a
// temporary error and retries after a pause, silently, and a jump's dial
// fails as "dial_failed": the gateway looks healthy while it turns users
// away. fdWatch makes it loud: every such failure is counted in
// bastion_fd_exhausted_total{op}, logged at most once per fdLogEvery
// (saying how many it stands for) and raised as an alert at most once per
// fdAlertEvery. Each session holds two descriptors (client and target),
// so 10,000 sessions need a limit well above 20,000: deploy/ sets 65536.

const (
	fdLogEvery   = 10 * time.Second
	fdAlertEvery = 5 * time.Minute
)

// fdWatch reports descriptor exhaustion.
type fdWatch struct {
	g         *Gateway
	exhausted *prometheus.CounterVec

	mu         sync.Mutex
	lastLog    time.Time
	lastAlert  time.Time
	suppressed int
}

func newFDWatch(g *Gateway, reg prometheus.Registerer) *fdWatch {
	w := &fdWatch{g: g, exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bastion_fd_exhausted_total", Help: "Sockets the gateway could not open because the process or system ran out of file descriptors, by operation (accept, dial).",
	}, []string{"op"})}
	if reg != nil {
		reg.MustRegister(w.exhausted)
	}
	return w
}

// isFDExhausted reports whether err is the kernel's "too many open files".
func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// check reports err if it is descriptor exhaustion during op.
func (w *fdWatch) check(op string, err error) {
	if err == nil || !isFDExhausted(err) {
		return
	}
	w.exhausted.WithLabelValues(op).Inc()
	now := w.g.now()
	w.mu.Lock()
	logNow := now.Sub(w.lastLog) >= fdLogEvery
	alertNow := now.Sub(w.lastAlert) >= fdAlertEvery
	n := w.suppressed
	if logNow {
		w.lastLog, w.suppressed = now, 0
	} else {
		w.suppressed++
	}
	if alertNow {
		w.lastAlert = now
	}
	w.mu.Unlock()
	if logNow {
		w.g.log.Error("out of file descriptors: new connections and jumps are refused; raise LimitNOFILE (systemd) or the container's nofile limit",
			"op", op, "err", err, "similar_since_last_log", n, "open_file_limit", openFileLimit())
	}
	if alertNow && w.g.deps.Alerter != nil {
		w.g.deps.Alerter.Raise(AlertFDExhausted, op, fmt.Sprintf("bastion: out of file descriptors (%v); new connections and jumps are refused; open-file limit %d", err, openFileLimit()))
	}
}

// fdListener reports accept failures from descriptor exhaustion; the
// accept loop still retries them.
type fdListener struct {
	net.Listener
	w *fdWatch
}

func (l fdListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	l.w.check("accept", err)
	return c, err
}

// OpenFileLimit is the process's soft limit on open files, which bounds
// concurrent sessions at about half of it (0 if unknown).
func OpenFileLimit() uint64 { return openFileLimit() }
