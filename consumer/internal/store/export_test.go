package store

// SetBeforeCommit holds s's inserts between their rows and their commit.
func SetBeforeCommit(s *Store, f func()) { s.beforeCommit = f }
