package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Registry is an OCI distribution registry (pull only) behind an HTTPS
// forward proxy on loopback. A client with HTTPS_PROXY pointing at URL and
// SSL_CERT_FILE at CAFile reaches it under any registry host name: the proxy
// answers every CONNECT itself with a certificate for the requested host,
// signed by a CA made at start, and nothing leaves the machine. Repositories
// are keyed by their path only (the host is ignored), so the stand-ins serve
// whatever registry the suites name.
type Registry struct {
	URL    string // http://127.0.0.1:port, for HTTPS_PROXY
	CAFile string // PEM of the CA, for SSL_CERT_FILE

	log   *slog.Logger
	store *Store
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey

	mu    sync.Mutex
	certs map[string]*tls.Certificate // by server name

	outer, inner *http.Server
	ln           net.Listener
	conns        *connListener
	wg           sync.WaitGroup
}

// StartRegistry starts the proxy and registry serving store. dir receives the
// CA file. Close stops both.
func StartRegistry(ctx context.Context, log *slog.Logger, store *Store, dir string) (*Registry, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tether suites stand-in registry CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	caFile := dir + "/stand-in-ca.pem"
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Registry{
		URL: "http://" + ln.Addr().String(), CAFile: caFile,
		log: log, store: store, ca: ca, caKey: caKey,
		certs: map[string]*tls.Certificate{},
		ln:    ln,
		conns: newConnListener(ln.Addr()),
	}
	// A client that gives up on a connection (a cancelled pull) is no
	// error of ours: the servers' own messages go to the debug log.
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	r.inner = &http.Server{Handler: http.HandlerFunc(r.serveRegistry), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog}
	r.outer = &http.Server{Handler: http.HandlerFunc(r.serveProxy), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		if err := r.outer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("stand-in proxy", "err", err)
		}
	}()
	go func() {
		defer r.wg.Done()
		if err := r.inner.Serve(r.conns); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("stand-in registry", "err", err)
		}
	}()
	return r, nil
}

// Env is the environment a client (or a containerd that pulls) needs to reach
// the registry: the proxy for HTTPS, the CA as the only trusted root.
func (r *Registry) Env() []string {
	return []string{"HTTPS_PROXY=" + r.URL, "https_proxy=" + r.URL, "NO_PROXY=", "no_proxy=", "SSL_CERT_FILE=" + r.CAFile}
}

// Close stops the proxy and the registry and waits for their goroutines.
func (r *Registry) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.outer.Shutdown(ctx)
	if err2 := r.inner.Shutdown(ctx); err == nil {
		err = err2
	}
	_ = r.outer.Close()
	_ = r.inner.Close()
	r.wg.Wait()
	return err
}

// serveProxy answers CONNECT host:443 by terminating TLS itself and handing
// the connection to the registry server. Anything else is refused.
func (r *Registry) serveProxy(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodConnect {
		http.Error(w, "this proxy only serves CONNECT to the stand-in registry", http.StatusMethodNotAllowed)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	host, _, err := net.SplitHostPort(req.Host)
	if err != nil {
		host = req.Host
	}
	if _, err := rw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		conn.Close()
		return
	}
	if err := rw.Flush(); err != nil {
		conn.Close()
		return
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := hello.ServerName
			if name == "" {
				name = host
			}
			return r.cert(name)
		},
	}
	r.conns.push(tls.Server(&bufConn{Conn: conn, r: rw.Reader}, cfg))
}

// cert returns a leaf certificate for name signed by the CA, made once.
func (r *Registry) cert(name string) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.certs[name]; ok {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.ca, &key.PublicKey, r.caKey)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	r.certs[name] = c
	return c, nil
}

// serveRegistry is the pull side of the distribution API: /v2/,
// manifests by tag or digest, blobs by digest.
func (r *Registry) serveRegistry(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "the stand-in registry is read-only")
		return
	}
	p := req.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		regError(w, http.StatusNotFound, "NOT_FOUND", "not a registry path")
		return
	}
	var (
		name, ref string
		manifest  bool
	)
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		name, ref, manifest = rest[:i], rest[i+len("/manifests/"):], true
	} else if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		name, ref = rest[:i], rest[i+len("/blobs/"):]
	} else {
		regError(w, http.StatusNotFound, "NOT_FOUND", "not a registry path")
		return
	}
	r.log.Debug("stand-in registry", "host", req.Host, "method", req.Method, "name", name, "ref", ref)
	var (
		b     Blob
		found bool
	)
	if manifest {
		b, found = r.store.Manifest(name, ref)
	} else {
		b, found = r.store.Blob(name, ref)
	}
	if !found {
		code := "BLOB_UNKNOWN"
		if manifest {
			code = "MANIFEST_UNKNOWN"
		}
		regError(w, http.StatusNotFound, code, fmt.Sprintf("%s %s not in the stand-in registry", name, ref))
		return
	}
	w.Header().Set("Content-Type", b.MediaType)
	w.Header().Set("Docker-Content-Digest", b.Digest)
	w.Header().Set("Content-Length", fmt.Sprint(len(b.Data)))
	w.WriteHeader(http.StatusOK)
	if req.Method == http.MethodGet {
		_, _ = w.Write(b.Data)
	}
}

func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

// bufConn is a hijacked connection whose first bytes may sit in r.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// connListener is a net.Listener fed with connections by push: the TLS
// connections the proxy terminated.
type connListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.closed:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }
