package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	runcOptionsTypeURL = "containerd.runc.v1.Options"
	featuresTypeURL    = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
)

// runShimInfo runs `<shim> -info` with stdin and parses its stdout as a protobuf RuntimeInfo.
func runShimInfo(t *testing.T, stdin []byte) (*apitypes.RuntimeInfo, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, shimBin, "-info")
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s -info: %v; stderr %q", shimBin, err, stderr.String())
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(stdout.Bytes(), &info); err != nil {
		t.Fatalf("%s -info: stdout is not a protobuf RuntimeInfo: %v (%d bytes: %q)", shimBin, err, stdout.Len(), stdout.String())
	}
	t.Logf("-info: name %q, version %v, options %q, features %q (%d bytes); stderr %q",
		info.GetName(), info.GetVersion(), info.GetOptions().GetTypeUrl(), info.GetFeatures().GetTypeUrl(),
		len(info.GetFeatures().GetValue()), stderr.String())
	return &info, stderr.String()
}

// runtimeFeatures runs `<binary> features`; ok is false if the runtime has no such command.
func runtimeFeatures(t *testing.T, binary string) (doc []byte, ok bool, r result) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r = run(ctx, binary, "features")
	return []byte(r.stdout), r.code == 0 && json.Valid([]byte(r.stdout)), r
}

// sameJSON tells whether two JSON documents hold the same values.
func sameJSON(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// checkInfoCommon checks what every RuntimeInfo of Tether has.
func checkInfoCommon(t *testing.T, info *apitypes.RuntimeInfo) {
	t.Helper()
	if info.GetName() != "io.containerd.tether.v2" {
		t.Errorf("RuntimeInfo name %q, want io.containerd.tether.v2", info.GetName())
	}
	if info.GetVersion().GetVersion() == "" {
		t.Errorf("RuntimeInfo has no version: %v", info.GetVersion())
	}
	if got := info.GetOptions().GetTypeUrl(); got != runcOptionsTypeURL {
		t.Errorf("RuntimeInfo options type %q, want %s", got, runcOptionsTypeURL)
	}
}

// checkFeatures parses the features Any as the runtime-spec features document.
func checkFeatures(t *testing.T, a *anypb.Any) *features.Features {
	t.Helper()
	if a == nil || len(a.GetValue()) == 0 {
		t.Fatalf("RuntimeInfo has no features")
	}
	if a.GetTypeUrl() != featuresTypeURL {
		t.Errorf("features type %q, want %s", a.GetTypeUrl(), featuresTypeURL)
	}
	var f features.Features
	if err := json.Unmarshal(a.GetValue(), &f); err != nil {
		t.Fatalf("features are not the runtime-spec features JSON: %v: %q", err, a.GetValue())
	}
	if f.OCIVersionMax == "" {
		t.Errorf("features have no ociVersionMax: %q", a.GetValue())
	}
	return &f
}

// containerd-shim-tether-v2 -info prints a protobuf RuntimeInfo: its name,
// version, the options type, and the OCI runtime's features (runc's by
// default, crun's when the options on stdin name crun). containerd 2.x
// reaches the same through its introspection service.
func TestShimInfo(t *testing.T) {
	runcDoc, runcOK, runcRes := runtimeFeatures(t, "runc")
	if !runcOK {
		t.Fatalf("runc features: %s", runcRes)
	}

	t.Run("default", func(t *testing.T) {
		info, _ := runShimInfo(t, nil)
		checkInfoCommon(t, info)
		f := checkFeatures(t, info.GetFeatures())
		if !sameJSON(info.GetFeatures().GetValue(), runcDoc) {
			t.Errorf("the default features are not `runc features`:\n got %s\nwant %s", info.GetFeatures().GetValue(), runcDoc)
		}
		if f.Annotations["org.opencontainers.runc.version"] == "" {
			t.Errorf("the default features do not come from runc (no org.opencontainers.runc.version annotation): %v", f.Annotations)
		}
	})

	crunOpts := func(t *testing.T) []byte {
		t.Helper()
		v, err := proto.Marshal(&runcoptions.Options{BinaryName: "crun"})
		if err != nil {
			t.Fatal(err)
		}
		in, err := proto.Marshal(&anypb.Any{TypeUrl: runcOptionsTypeURL, Value: v})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}

	t.Run("crun", func(t *testing.T) {
		crunDoc, crunOK, crunRes := runtimeFeatures(t, "crun")
		info, stderr := runShimInfo(t, crunOpts(t))
		checkInfoCommon(t, info)
		var o runcoptions.Options
		if err := proto.Unmarshal(info.GetOptions().GetValue(), &o); err != nil || o.GetBinaryName() != "crun" {
			t.Errorf("RuntimeInfo options %v (%v), want the given options with BinaryName crun", &o, err)
		}
		if crunOK {
			checkFeatures(t, info.GetFeatures())
			if !sameJSON(info.GetFeatures().GetValue(), crunDoc) {
				t.Errorf("the features with BinaryName crun are not `crun features`:\n got %s\nwant %s", info.GetFeatures().GetValue(), crunDoc)
			}
			return
		}
		// Debian's crun 1.8.1 has no features command ("unknown command
		// features"), so crun has no features to report and runc's must not
		// stand in for them.
		t.Logf("`crun features` fails (%s): the RuntimeInfo must carry no features and say why on stderr", oneLine(crunRes.String()))
		if f := info.GetFeatures(); f != nil {
			t.Errorf("RuntimeInfo with BinaryName crun carries features although `crun features` fails: %s %q", f.GetTypeUrl(), f.GetValue())
			if sameJSON(f.GetValue(), runcDoc) {
				t.Errorf("... and they are runc's")
			}
		}
		if !strings.Contains(stderr, "crun") {
			t.Errorf("-info stderr %q does not say that crun's features are missing", stderr)
		}
	})

	// containerd 2.x runs `-info` for its introspection service (and for
	// idmap checks at Create); 1.x has no RuntimeInfo.
	for _, v := range versions {
		if v.major < 2 {
			t.Logf("containerd %s has no RuntimeInfo (introspection PluginInfo came with 2.0): checked directly only", v.name)
			continue
		}
		t.Run("containerd-"+v.name, func(t *testing.T) {
			d := getDaemon(t, v)
			c := d.goClient(t, "e2e-info-"+v.tag)
			ctx, cancel := clientCtx("e2e-info-" + v.tag)
			defer cancel()
			ri, err := c.RuntimeInfo(ctx, runtimeName, nil)
			if err != nil {
				t.Fatalf("RuntimeInfo(%s): %v", runtimeName, err)
			}
			if ri.Name != "io.containerd.tether.v2" || ri.Version.Version == "" {
				t.Errorf("RuntimeInfo through containerd: name %q version %q", ri.Name, ri.Version.Version)
			}
			if _, ok := ri.Options.(*runcoptions.Options); !ok {
				t.Errorf("RuntimeInfo through containerd: options %T, want *options.Options", ri.Options)
			}
			f, ok := ri.Features.(*features.Features)
			if !ok {
				t.Fatalf("RuntimeInfo through containerd: features %T, want *features.Features", ri.Features)
			}
			if f.Annotations["org.opencontainers.runc.version"] == "" {
				t.Errorf("RuntimeInfo through containerd: features without runc's annotations: %v", f.Annotations)
			}
			t.Logf("through containerd %s: %s %s, %d annotations", v.name, ri.Name, ri.Version.Version, len(f.Annotations))
		})
	}
}
