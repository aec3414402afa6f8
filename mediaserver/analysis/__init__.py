"""Call analysis: voice activity per channel, turns, latencies, interruptions, silences."""
