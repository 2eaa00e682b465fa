package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/introspect"
)

// TestRunUpgradeArguments: a command line upgrade cannot run is a usage
// error, and a process that is not a shim server is refused by name, never
// asked to upgrade.
func TestRunUpgradeArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"upgrade"}, exitUsage, "give --all or pids"},
		{[]string{"upgrade", "--all", "12"}, exitUsage, "give --all or pids, not both"},
		{[]string{"upgrade", "x"}, exitUsage, `"x" is not a pid`},
		{[]string{"upgrade", "-1"}, 1, "flag provided but not defined: -1"},
		{[]string{"upgrade", "2147483647"}, 1, "no process has pid 2147483647"},
		{[]string{"upgrade", fmt.Sprint(os.Getpid())}, 1, "is not a Tether shim server"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("tether %q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}

// TestRegressionUpgradeAskedShimOfOtherUID: `tether upgrade PID` sent
// Upgrade to a shim of another uid (only --all filtered them); it is
// refused by name now, as every other command refuses it.
func TestRegressionUpgradeAskedShimOfOtherUID(t *testing.T) {
	err := ownShim(shim{Pid: 4242, UID: 65534})
	if !errors.Is(err, introspect.ErrOtherUID) || !strings.Contains(err.Error(), "run tether as the shim's uid") {
		t.Errorf("a shim of uid 65534: %v", err)
	}
	if err := ownShim(shim{Pid: 4242, UID: os.Geteuid()}); err != nil {
		t.Errorf("a shim of this uid: %v", err)
	}
}
