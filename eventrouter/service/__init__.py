"""The running router (`eventrouter run`): the daemon, wiring config, runtime and Redis.

Signals, reload, bounded shutdown, systemd notification, and what `status`, `history`,
`retry`, `reload` and the metrics endpoint ask of a running router.
"""
