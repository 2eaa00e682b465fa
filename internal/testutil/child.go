package testutil

import (
	"os"
	"strings"
)

// ChildEnv is the environment of a child that runs the test binary again
// in a mode: this process's environment with key=value in place of any key
// it has. Under the race detector a child exiting 0 sleeps atexit_sleep_ms
// (1 s by default) before it exits; GORACE turns that off, after whatever
// GORACE this process was given.
func ChildEnv(key, value string) []string {
	env := []string{key + "=" + value}
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, key+"="):
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
		default:
			env = append(env, kv)
		}
	}
	return append(env, "GORACE="+gorace)
}
