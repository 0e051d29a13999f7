// Raft: see issue 3.
