package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"time"
)

// featuresTimeout bounds `<runtime> features`.
const featuresTimeout = 5 * time.Second

// Features runs `<binary> features` (binary "" is DefaultBinary) and returns
// the runtime-spec features document it prints, checked to be JSON. It runs
// no exit monitor Hold: it is for `-info`, which has none.
func Features(ctx context.Context, binary string) ([]byte, error) {
	if binary == "" {
		binary = DefaultBinary
	}
	ctx, cancel := context.WithTimeout(ctx, featuresTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "features").Output()
	if err != nil {
		return nil, fmt.Errorf("%s features: %w", binary, err)
	}
	if !json.Valid(out) {
		return nil, errors.New(binary + " features: output is not JSON")
	}
	return out, nil
}
