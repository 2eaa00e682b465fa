package bootstrap

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// oomScoreAdjMax is the largest oom_score_adj the kernel takes.
const oomScoreAdjMax = 1000

// adjustOOMScore sets the oom_score_adj of pid to that of parent plus one,
// at most oomScoreAdjMax, as containerd's own shims do: under memory
// pressure the OOM killer then takes a shim before the containerd that
// started it. Raising a score needs no privilege, so this works where
// containerd lacks CAP_SYS_RESOURCE.
func adjustOOMScore(pid, parent int) error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", parent))
	if err != nil {
		return fmt.Errorf("oom score of %d: %w", parent, err)
	}
	score, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("oom score of %d: %w", parent, err)
	}
	score = min(score+1, oomScoreAdjMax)
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(score)), 0); err != nil {
		return fmt.Errorf("oom score of %d: %w", pid, err)
	}
	return nil
}
