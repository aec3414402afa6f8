"""Pure: what the recordings API shows (views, list queries, byte ranges), no I/O."""
