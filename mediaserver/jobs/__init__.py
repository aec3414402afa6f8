"""Post-call jobs (analysis, transcripts) with durable state, behind a queue interface."""
