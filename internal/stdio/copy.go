package stdio

import (
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// buffer returns a copy buffer from the IO's pool. The copies take one only
// once poll(2) shows something to read and give it back before they wait
// again, so an idle stream holds none; the garbage collector empties the
// pool (a buffer survives one collection in the pool's victim cache), so an
// idle shim holds none for long (see docs/performance.md).
func (p *IO) buffer() *[]byte {
	if b, ok := p.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, copyBufSize)
	return &b
}

// lease returns the get and put of one copy's buffers, for pollRead: a copy
// holds a buffer only while it has data, and while it holds one it counts
// as work under way (Options.Busy), from the read to the end of the write.
// The two funcs belong to one copy goroutine.
func (p *IO) lease() (get func() *[]byte, put func(*[]byte)) {
	var end func()
	get = func() *[]byte {
		if p.busy != nil {
			end = p.busy()
		}
		return p.buffer()
	}
	put = func(b *[]byte) {
		p.bufs.Put(b)
		if end != nil {
			end()
			end = nil
		}
	}
	return get, put
}

// pollRead waits in the netpoller until the descriptor behind rc shows
// data, a hang-up or an error, and only then takes a buffer from get and
// reads into it. It returns the buffer (nil when none was taken), the count
// read, and io.EOF at end of file. A fifo's read end reports the hang-up
// only once a writer came and went, so a fifo whose client has not opened
// it yet is not taken for EOF. The poller's error (a deadline, a close)
// comes back as is.
func pollRead(rc syscall.RawConn, get func() *[]byte, put func(*[]byte)) (buf *[]byte, n int, err error) {
	rerr := rc.Read(func(fd uintptr) bool {
		fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, perr := unix.Poll(fds[:], 0); perr != nil {
			if perr == unix.EINTR {
				return false
			}
			err = perr
			return true
		}
		if fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) == 0 {
			return false
		}
		if buf == nil {
			buf = get()
		}
		n, err = unix.Read(int(fd), *buf)
		if err == unix.EAGAIN || err == unix.EINTR {
			n, err = 0, nil
			put(buf)
			buf = nil
			return false
		}
		if n == 0 && err == nil {
			err = io.EOF
		}
		return true
	})
	if n < 0 {
		n = 0
	}
	if rerr != nil {
		return buf, 0, rerr
	}
	return buf, n, err
}

// copyOut copies a process's output into dst until the source reports EOF
// (or EIO, a pty whose last slave closed) or is stopped, then runs closeDst.
// With a nil src it only runs closeDst: an adopted copy that had read to
// the end. Its stage is ro's.
func (p *IO) copyOut(ro role, dst io.Writer, src *os.File, closeDst func()) {
	defer p.outputs.Done()
	defer p.setStage(ro, stageDone)
	if src != nil {
		if rc, err := src.SyscallConn(); err == nil {
			p.pump(rc, dst, true, true)
		}
	}
	if closeDst == nil || p.abandoned.Load() {
		return
	}
	p.setStage(ro, stageClosing)
	closeDst()
}

// startCopyIn starts copying the client's stdin into dst, a pipe.
func (p *IO) startCopyIn(src *stdinFifo, dst io.WriteCloser) {
	p.mu.Lock()
	p.setStageLocked(roleIn, stageReading)
	p.mu.Unlock()
	p.input.Add(1)
	go p.copyIn(src, dst)
}

// copyIn copies the client's stdin into the process, and closes dst at EOF
// so that the process sees EOF (a pty gets ^D instead, see copyInConsole).
func (p *IO) copyIn(src *stdinFifo, dst io.WriteCloser) {
	defer p.input.Done()
	defer p.setStage(roleIn, stageDone)
	p.pump(src.rc, dst, false, false)
	if !p.abandoned.Load() {
		dst.Close()
	}
}

// pump copies from rc into dst until a read or a write fails (EOF
// included), taking a buffer only while there is data. With track, it
// counts for Drain the bytes written and the writes under way. While the
// IO is paused it parks between buffers (see park); output says whether
// stopOutputs ends it.
func (p *IO) pump(rc syscall.RawConn, dst io.Writer, track, output bool) {
	get, put := p.lease()
	for {
		if p.paused.Load() && !p.park(output) {
			return
		}
		buf, n, err := pollRead(rc, get, put)
		if n > 0 {
			if track {
				p.writing.Add(1)
			}
			w, werr := dst.Write((*buf)[:n])
			if track {
				p.writing.Add(-1)
				p.progress.Add(int64(w))
				if w < n {
					p.dropped.Add(int64(n - w))
				}
			}
			if werr != nil {
				err = werr
			}
		}
		if buf != nil {
			put(buf)
		}
		if err != nil {
			// A read deadline that is not a stop's is Pause's: it woke
			// the copy without reading.
			if n == 0 && p.pauseWoke(err, output) {
				continue
			}
			return
		}
	}
}
