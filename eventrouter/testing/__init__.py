"""Test a router in one process: the real daemon and dispatcher on in-memory stand-ins.

``Harness`` is the entry point (docs/testing-harness.md). Nothing in the router imports this
package: it sits above every layer and may import them all (tests/test_layers.py).
"""

from eventrouter.testing.fakes import (
    Beacon,
    FakeClock,
    FakeRunner,
    FakeTasks,
    Gate,
    MemoryJournal,
    StepCall,
    TaskCall,
)
from eventrouter.testing.harness import Harness, MemoryWiring
from eventrouter.testing.memorybus import Listener, MemoryBus, MemoryPublisher, MemorySubscriber

__all__ = [
    "Beacon",
    "FakeClock",
    "FakeRunner",
    "FakeTasks",
    "Gate",
    "Harness",
    "Listener",
    "MemoryBus",
    "MemoryJournal",
    "MemoryPublisher",
    "MemorySubscriber",
    "MemoryWiring",
    "StepCall",
    "TaskCall",
]
