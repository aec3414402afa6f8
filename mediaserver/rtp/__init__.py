"""RTP and RTCP wire formats (RFC 3550), pure."""
