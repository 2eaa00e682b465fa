// Command logger is a containerd logging binary for the end-to-end tests
// (ctr run --log-uri binary:///path/to/logger?dir=/records).
//
// It copies what it reads on fd 3 (the container's stdout) and fd 4 (its
// stderr) into <dir>/stdout and <dir>/stderr as it reads it, closes fd 5 to
// tell the shim it is ready, and records its arguments (args), environment
// (env), pid (pid), what fds 3 to 5 are (fds) and what happened (events).
//
// Arguments come as key value pairs, as the shim passes the URI's query:
//
//	dir DIR     where to write the records (default: <its own dir>/no-dir-arg)
//	linger 1    do not exit at EOF; wait for SIGTERM or SIGINT
//
// Without linger it exits once both streams reached EOF. On SIGTERM or
// SIGINT it copies what is left (for at most 5 seconds) and exits.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	opts := map[string]string{}
	for i := 1; i+1 < len(os.Args); i += 2 {
		opts[os.Args[i]] = os.Args[i+1]
	}
	dir := opts["dir"]
	if dir == "" {
		exe, err := os.Executable()
		if err != nil {
			os.Exit(2)
		}
		dir = filepath.Join(filepath.Dir(exe), "no-dir-arg")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		os.Exit(2)
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)

	var evMu sync.Mutex
	event := func(format string, a ...any) {
		evMu.Lock()
		defer evMu.Unlock()
		f, err := os.OpenFile(filepath.Join(dir, "events"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return
		}
		fmt.Fprintf(f, format+"\n", a...)
		f.Close()
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			event("write %s: %v", name, err)
		}
	}
	write("pid", fmt.Sprintf("%d\n", os.Getpid()))
	write("args", strings.Join(os.Args[1:], "\n")+"\n")
	write("env", strings.Join(os.Environ(), "\n")+"\n")

	var fds strings.Builder
	for fd := 3; fd <= 5; fd++ {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			fmt.Fprintf(&fds, "%d error %v\n", fd, err)
			continue
		}
		typ := "other"
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFIFO:
			typ = "fifo"
		case syscall.S_IFREG:
			typ = "file"
		case syscall.S_IFCHR:
			typ = "char"
		case syscall.S_IFSOCK:
			typ = "socket"
		}
		flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFL, 0)
		acc := "?"
		if errno == 0 {
			switch flags & syscall.O_ACCMODE {
			case syscall.O_RDONLY:
				acc = "r"
			case syscall.O_WRONLY:
				acc = "w"
			case syscall.O_RDWR:
				acc = "rw"
			}
		}
		fmt.Fprintf(&fds, "%d %s %s\n", fd, typ, acc)
	}
	write("fds", fds.String())

	var wg sync.WaitGroup
	for _, s := range []struct {
		fd   int
		name string
	}{{3, "stdout"}, {4, "stderr"}} {
		out, err := os.OpenFile(filepath.Join(dir, s.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			event("open %s: %v", s.name, err)
			continue
		}
		in := os.NewFile(uintptr(s.fd), s.name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := io.Copy(out, in) // unbuffered: every read is written at once
			out.Close()
			event("eof %s: %d bytes, err %v", s.name, n, err)
		}()
	}
	copied := make(chan struct{})
	go func() {
		wg.Wait()
		close(copied)
	}()

	if err := syscall.Close(5); err != nil {
		event("close fd 5: %v", err)
	} else {
		event("ready")
	}

	if opts["linger"] == "1" {
		s := <-sigc
		event("signal %v", s)
	} else {
		select {
		case <-copied:
			event("exit at eof")
			return
		case s := <-sigc:
			event("signal %v", s)
		}
	}
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
		event("gave up waiting for eof")
	}
	event("exit")
}
