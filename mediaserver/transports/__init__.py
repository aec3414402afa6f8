"""Network edges: WebRTC and plain-RTP callers, WebSocket agents."""
