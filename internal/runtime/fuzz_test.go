package runtime

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzParseOptions: any options Any decodes to options that Validate
// accepts, or to an InvalidArgument or NotFound error (a config_path that
// names no file), or a permission error of a file it may not read; it never
// panics.
func FuzzParseOptions(f *testing.F) {
	full, _ := proto.Marshal(&runcoptions.Options{BinaryName: "crun", Root: "/run/crun", SystemdCgroup: true, IoUid: 1})
	body := bodyAny(f, "", "", "BinaryName = 'crun'\nSystemdCgroup = true\n").GetValue()
	path := bodyAny(f, ConfigFileTypeURL, "/nonexistent/tether.toml", "").GetValue()
	for _, seed := range []struct {
		url   string
		value []byte
	}{
		{OptionsTypeURL, full},
		{"type.googleapis.com/" + OptionsTypeURL, full},
		{RuntimeOptionsTypeURL, body},
		{RuntimeOptionsTypeURL, path},
		{LegacyRuncOptionsTypeURL, []byte{0x0a, 0x04, 'c', 'r', 'u', 'n'}},
		{LegacyCreateOptionsTypeURL, []byte{0x08, 0x01}},
		{"", nil},
		{"io.example.Other", []byte{0xff}},
	} {
		f.Add(seed.url, seed.value)
	}
	f.Fuzz(func(t *testing.T, url string, value []byte) {
		o, err := ParseOptions(&anypb.Any{TypeUrl: url, Value: value})
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrNotFound) && !errors.Is(err, fs.ErrPermission) {
				t.Fatalf("ParseOptions(%q, %x) = %v: not InvalidArgument or NotFound", url, value, err)
			}
			return
		}
		if verr := o.Validate(); verr != nil {
			t.Fatalf("ParseOptions(%q, %x) accepted %+v, which Validate refuses: %v", url, value, o, verr)
		}
	})
}

// FuzzLastLogError: whatever a runtime writes to its log, lastLogError
// returns at most what it read (a bounded tail) and never panics.
func FuzzLastLogError(f *testing.F) {
	f.Add([]byte(`{"level":"error","msg":"container does not exist","time":"x"}`+"\n"), int64(0))
	f.Add([]byte("{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"fatal\",\"msg\":\"f\"}\n"), int64(3))
	f.Add([]byte("not json\n\n\n{"), int64(-5))
	f.Fuzz(func(t *testing.T, data []byte, from int64) {
		path := filepath.Join(t.TempDir(), "log.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if msg := lastLogError(path, from); len(msg) > len(data) || len(msg) > logTail {
			t.Fatalf("lastLogError returned %d bytes from a %d-byte log", len(msg), len(data))
		}
	})
}
