package bootstrap

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/runtime"
)

// RuntimeName is the containerd runtime name the shim is installed as.
const RuntimeName = "io.containerd.tether.v2"

// featuresTypeURL is the type URL containerd registers for the runtime-spec
// features document.
func featuresTypeURL() string {
	return "types.containerd.io/opencontainers/runtime-spec/" + strconv.Itoa(specs.VersionMajor) + "/features/Features"
}

// Info implements -info: it prints a protobuf RuntimeInfo naming the shim,
// its version, the options type and the OCI runtime's features. containerd
// 2.x writes the runtime options Any to stdin.
func Info(ctx context.Context, version string, stdin *os.File, stdout, warn io.Writer) error {
	in, err := readStdin(stdin)
	if err != nil {
		return err
	}
	opts := &anypb.Any{TypeUrl: runtime.OptionsTypeURL}
	if len(in) > 0 {
		if err := proto.Unmarshal(in, opts); err != nil {
			return fmt.Errorf("stdin is not a runtime options Any: %w", err)
		}
	}
	parsed, err := runtime.ParseOptions(opts)
	if err != nil {
		return err
	}
	info := &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: version},
		Options: opts,
	}
	if features, err := runtime.Features(ctx, parsed.BinaryName); err != nil {
		fmt.Fprintf(warn, "features: %v\n", err)
	} else {
		info.Features = &anypb.Any{TypeUrl: featuresTypeURL(), Value: features}
	}
	data, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
}
