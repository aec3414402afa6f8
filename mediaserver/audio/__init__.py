"""Audio formats: Opus framing, Ogg Opus files, G.711 and the stereo merge."""
