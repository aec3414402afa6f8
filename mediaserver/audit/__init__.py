"""The audit log: who read, downloaded, held, deleted or let expire which recording, and when."""
