package testutil

import (
	"os"
	"os/signal"
	"syscall"
)

// PrimeRuntime starts the parts of the Go runtime that live as long as the
// process once started, so that the first test to start them does not have
// CheckLeaks count them as its leaks: the netpoller (a pollable file
// initialises it, with descriptors of its own) and the os/signal loop
// goroutine (started by the first signal.Notify). Call it in TestMain,
// before m.Run. It leaves no signal handled: Notify is undone by Stop.
func PrimeRuntime() {
	pr, pw, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	pr.Close()
	pw.Close()
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGCHLD)
	signal.Stop(c)
}
