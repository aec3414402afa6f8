"""Transcripts per channel from interchangeable backends, merged into one dialogue."""
