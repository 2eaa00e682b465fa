package exits

// Children lists this process's children, or, where the kernel has no
// /proc/PID/task/TID/children, its zombies only. Live upgrade refuses while
// there is any: its state version 1 does not carry the process a child is.
func (r *Reaper) Children() ([]int, error) { return r.children() }
