package bootstrap

import (
	"os"
	"slices"
	"testing"
)

func TestServerEnv(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"caller without GOMAXPROCS",
			[]string{"PATH=/bin", "TTRPC_ADDRESS=/run/c.sock.ttrpc"},
			[]string{"PATH=/bin", "TTRPC_ADDRESS=/run/c.sock.ttrpc", "GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS="}},
		{"caller with GOMAXPROCS",
			[]string{"GOMAXPROCS=8", "PATH=/bin"},
			[]string{"PATH=/bin", "GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS=8"}},
		{"a stale carrier is replaced",
			[]string{"TETHER_CALLER_GOMAXPROCS=3", "PATH=/bin"},
			[]string{"PATH=/bin", "GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS="}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serverEnv(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("serverEnv(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// The server's children (runtime commands, logging binaries) must see the
// environment containerd gave the shim, not the server's GOMAXPROCS=1.
func TestRestoreCallerEnv(t *testing.T) {
	tests := []struct {
		name      string
		carrier   *string // nil: not set
		want      string
		wantIsSet bool
	}{
		{"caller had none", new(""), "", false},
		{"caller had one", new("8"), "8", true},
		{"not launched by start", nil, "1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", "1")
			t.Setenv(callerGOMAXPROCS, "")
			if tt.carrier == nil {
				os.Unsetenv(callerGOMAXPROCS)
			} else {
				os.Setenv(callerGOMAXPROCS, *tt.carrier)
			}
			if err := restoreCallerEnv(); err != nil {
				t.Fatal(err)
			}
			got, ok := os.LookupEnv("GOMAXPROCS")
			if got != tt.want || ok != tt.wantIsSet {
				t.Errorf("GOMAXPROCS = %q (set %v), want %q (set %v)", got, ok, tt.want, tt.wantIsSet)
			}
			if _, ok := os.LookupEnv(callerGOMAXPROCS); ok {
				t.Errorf("%s still set", callerGOMAXPROCS)
			}
		})
	}
}
