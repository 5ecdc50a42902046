"""How much a follower of a spool reads at once: large reads while the process-wide budget allows them.

A follower that is behind (the spool holds more than one small chunk past its position) is fastest with large
messages: the cost of a gRPC message is mostly per message, not per byte. A large read is held, as the chunk
made of it, until the follower's consumer asks for the next event (the server has handed the message to grpc),
so the budget bounds what the large reads of all followers together hold, whatever their number; a follower
that finds it spent reads a small block, as every follower did before.
"""

from __future__ import annotations

# A follower that gets no grant reads this much: one 64 KiB chunk and the records' headers around it.
SMALL_CHUNK = 64 * 1024
SMALL_BLOCK = SMALL_CHUNK + 64
# A grant's chunk: about where grpc's Python streaming stops gaining from larger messages on loopback.
LARGE_CHUNK = 1 << 20
# Room for the headers of the records a large chunk is made of (16 of 64 KiB, or many small ones: a block
# that ends inside a record is read again from that record next time).
LARGE_BLOCK = LARGE_CHUNK + 4096
# Large reads in flight at once, process-wide: 8 followers' worth.
BUDGET_BYTES = 8 * LARGE_BLOCK


class ReadBudget:
    """Bytes of large reads held by followers now, against a fixed limit (the event loop's thread only)."""

    def __init__(self, limit: int = BUDGET_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def take(self, ahead: int) -> int:
        """The block size for a follower `ahead` bytes behind the spool's end: LARGE_BLOCK when the
        budget has room for it (the caller gives it back), SMALL_BLOCK otherwise."""
        if ahead <= SMALL_BLOCK or self.used + LARGE_BLOCK > self.limit:
            return SMALL_BLOCK
        self.used += LARGE_BLOCK
        return LARGE_BLOCK

    def give(self, block: int) -> None:
        """Return what take() granted (a no-op for a small block)."""
        if block == LARGE_BLOCK:
            self.used -= LARGE_BLOCK


def chunk_bytes(block: int) -> int:
    """The largest chunk a follower makes of a block of this size."""
    return LARGE_CHUNK if block == LARGE_BLOCK else SMALL_CHUNK


READS = ReadBudget()
"""The process's budget, shared by every spool's followers."""
