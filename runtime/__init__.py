"""Process plumbing both programs share: logging, signals and stop deadline, systemd notify, TLS."""
