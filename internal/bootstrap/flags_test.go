package bootstrap

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(thpChildEnv) != "" {
		os.Exit(thpChild())
	}
	if os.Getenv(dialChildEnv) != "" {
		os.Exit(dialChild())
	}
	if os.Getenv(stackBurstChildEnv) != "" {
		os.Exit(stackBurstChild())
	}
	testutil.PrimeRuntime()
	os.Exit(m.Run())
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name string
		args string
		want Flags
	}{
		{
			name: "containerd 1.x and 2.2 start",
			args: "-namespace ns -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id c1 start",
			want: Flags{Namespace: "ns", Address: "/run/containerd/containerd.sock", PublishBinary: "/usr/bin/containerd", ID: "c1", Action: "start"},
		},
		{
			name: "containerd 2.4 start",
			args: "-namespace ns -id c1 -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -bundle /run/b/c1 -debug start",
			want: Flags{Namespace: "ns", ID: "c1", Address: "/run/containerd/containerd.sock", PublishBinary: "/usr/bin/containerd", Bundle: "/run/b/c1", Debug: true, Action: "start"},
		},
		{
			name: "delete",
			args: "-namespace k8s.io -address /a -publish-binary /p -id c2 -bundle /b/c2 delete",
			want: Flags{Namespace: "k8s.io", Address: "/a", PublishBinary: "/p", ID: "c2", Bundle: "/b/c2", Action: "delete"},
		},
		{
			name: "double dash flags",
			args: "--namespace ns --id c1 serve",
			want: Flags{Namespace: "ns", ID: "c1", Action: "serve"},
		},
		{name: "version", args: "-v", want: Flags{Version: true}},
		{name: "info", args: "-info", want: Flags{Info: true}},
		{name: "nothing", args: "", want: Flags{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errOut bytes.Buffer
			got, err := ParseFlags(strings.Fields(tt.args), &errOut)
			if err != nil {
				t.Fatalf("ParseFlags(%q) error = %v", tt.args, err)
			}
			if got != tt.want {
				t.Fatalf("ParseFlags(%q) = %+v, want %+v", tt.args, got, tt.want)
			}
			if errOut.Len() != 0 {
				t.Errorf("ParseFlags wrote %q", errOut.String())
			}
		})
	}
}

func TestParseFlagsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"unknown flag", []string{"-namespace", "ns", "-socket", "/x", "start"}},
		{"missing value", []string{"-namespace"}},
		{"bad bool", []string{"-debug=maybe", "start"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errOut bytes.Buffer
			if _, err := ParseFlags(tt.args, &errOut); err == nil {
				t.Fatalf("ParseFlags(%q) succeeded", tt.args)
			}
			if !strings.Contains(errOut.String(), "Usage") {
				t.Errorf("usage not written to errOut: %q", errOut.String())
			}
		})
	}
}

func TestFlagsValidate(t *testing.T) {
	tests := []struct {
		name string
		f    Flags
		ok   bool
	}{
		{"complete", Flags{Namespace: "ns", ID: "c1"}, true},
		{"no namespace", Flags{ID: "c1"}, false},
		{"no id", Flags{Namespace: "ns"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.f.validate(); (err == nil) != tt.ok {
				t.Fatalf("validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestBundleDir(t *testing.T) {
	got, err := Flags{Bundle: "/run/b/c1"}.bundleDir()
	if err != nil || got != "/run/b/c1" {
		t.Fatalf("bundleDir() = %q, %v; want the -bundle flag", got, err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	got, err = Flags{}.bundleDir()
	if err != nil || got != wd {
		t.Fatalf("bundleDir() = %q, %v; want the working directory %q", got, err, wd)
	}
}
