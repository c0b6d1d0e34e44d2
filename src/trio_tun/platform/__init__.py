"""How each operating system hands us a packet file descriptor (or handle)."""
