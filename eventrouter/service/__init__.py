"""The service: wires config, runtime and Redis together; signals, reload, shutdown, systemd."""
