package taskservice

// Held returns how many containers the service holds, those whose Create is
// in flight included. Live upgrade refuses while it is not zero: its state
// version 1 does not carry containers (docs/design.md, "Live upgrade").
func (s *Service) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.containers) + len(s.creating)
}
