"""The decision core: event + route table + router context -> decision. Pure, no I/O."""
