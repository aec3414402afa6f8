"""Records voice calls between a caller and a voice-AI agent."""
