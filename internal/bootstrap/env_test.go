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
		{"caller without settings",
			[]string{"PATH=/bin", "TTRPC_ADDRESS=/run/c.sock.ttrpc"},
			[]string{"PATH=/bin", "TTRPC_ADDRESS=/run/c.sock.ttrpc",
				"GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS=", "GODEBUG=disablethp=1,adaptivestackstart=0", "TETHER_CALLER_GODEBUG="}},
		{"caller with GOMAXPROCS and GODEBUG",
			[]string{"GOMAXPROCS=8", "PATH=/bin", "GODEBUG=madvdontneed=0"},
			[]string{"PATH=/bin",
				"GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS=8",
				"GODEBUG=madvdontneed=0,disablethp=1,adaptivestackstart=0", "TETHER_CALLER_GODEBUG=madvdontneed=0"}},
		{"the caller's disablethp=0 is overridden",
			[]string{"GODEBUG=disablethp=0"},
			[]string{"GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS=",
				"GODEBUG=disablethp=0,disablethp=1,adaptivestackstart=0", "TETHER_CALLER_GODEBUG=disablethp=0"}},
		{"stale carriers are replaced",
			[]string{"TETHER_CALLER_GOMAXPROCS=3", "PATH=/bin", "TETHER_CALLER_GODEBUG=x=1"},
			[]string{"PATH=/bin",
				"GOMAXPROCS=1", "TETHER_CALLER_GOMAXPROCS=", "GODEBUG=disablethp=1,adaptivestackstart=0", "TETHER_CALLER_GODEBUG="}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serverEnv(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("serverEnv(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// The server's children (runtime commands, logging binaries, and through
// the runtime the containers) must see the environment containerd gave the
// shim, not the server's GOMAXPROCS=1 and disablethp=1.
func TestRestoreCallerEnv(t *testing.T) {
	type setting struct {
		name, carrier, server string
	}
	settings := []setting{
		{"GOMAXPROCS", "TETHER_CALLER_GOMAXPROCS", "1"},
		{"GODEBUG", "TETHER_CALLER_GODEBUG", "disablethp=1,adaptivestackstart=0"},
	}
	tests := []struct {
		name      string
		carrier   *string // nil: not set
		want      string
		wantIsSet bool
	}{
		{"caller had none", new(""), "", false},
		{"caller had one", new("8"), "8", true},
		{"not launched by start", nil, "", true}, // want: the server's value, unchanged
	}
	for _, s := range settings {
		for _, tt := range tests {
			t.Run(s.name+"/"+tt.name, func(t *testing.T) {
				t.Setenv(s.name, s.server)
				t.Setenv(s.carrier, "")
				if tt.carrier == nil {
					os.Unsetenv(s.carrier)
				} else {
					os.Setenv(s.carrier, *tt.carrier)
				}
				if err := restoreCallerEnv(); err != nil {
					t.Fatal(err)
				}
				want := tt.want
				if tt.carrier == nil {
					want = s.server
				}
				got, ok := os.LookupEnv(s.name)
				if got != want || ok != tt.wantIsSet {
					t.Errorf("%s = %q (set %v), want %q (set %v)", s.name, got, ok, want, tt.wantIsSet)
				}
				if _, ok := os.LookupEnv(s.carrier); ok {
					t.Errorf("%s still set", s.carrier)
				}
			})
		}
	}
}
