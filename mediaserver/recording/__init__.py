"""Call recording core: packet journal, timeline placement, call state and manifest."""
