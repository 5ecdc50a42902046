"""The output spool's file format, and its writer (standard library only: the job's holder runs it).

A spool file holds one job's stdout and stderr as a sequence of records in arrival order (which keeps the
interleaving of the two streams as far as two pipes can tell it). Version 2 files start with ``MAGIC``;
each record is a 13-byte header ``<B stream><I length><q arrival time, ns since the epoch>`` followed by
``length`` bytes. Stream 1 is stdout, 2 is stderr, ``TRUNCATED`` marks the point where output stopped being
stored; its one payload byte names why (``REASON_*``). Version 1 files (the first release) have no magic and
5-byte headers without a time, and a cap mark without payload; readers still read them.

Beside the spool, the index starts with ``INDEX_MAGIC``; each 32-byte entry ``<q time_ns><Q offset>
<Q stdout bytes before><Q stderr bytes before>`` points at a record at least every ``INDEX_EVERY_BYTES`` and
at every new second of arrival, so a reader finds a time, a byte of a stream, or the last lines of a big
spool without reading it all (the byte counts give its position in each selected view). Its entries are in
offset order; times and counts never decrease.

Only whole records count as written: when the disk refuses a write (ENOSPC, EIO) the torn tail is cut off,
the writer stops storing (later output is counted and dropped) and writes the mark if five bytes still fit.
"""

import errno
import os
import struct

MAGIC = b"JWSPOOL\x02"
HEADER = struct.Struct("<BIq")
HEADER_V1 = struct.Struct("<BI")
INDEX_MAGIC = b"JWINDEX\x01"
INDEX_ENTRY = struct.Struct("<qQQQ")
STDOUT = 1
STDERR = 2
TRUNCATED = 0xFF
REASON_CAP = 0
REASON_DISK_FULL = 1
REASON_DISK_ERROR = 2
# Errors that mean the disk has no room; any other write error is a disk error.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The holder appends at most this much per record (one pipe read), so a reader's block holds whole records.
MAX_RECORD = 256 * 1024
INDEX_EVERY_BYTES = 1 << 20
_SECOND = 1_000_000_000


class SpoolWriter:
    """Appends records to a spool file with a cap on stored output; one writer per file."""

    def __init__(self, fd: int, cap_bytes: int, index_fd: int = -1) -> None:
        """fd: the spool opened for appending (empty: the magic is written first); index_fd: its index."""
        self._fd = fd
        self._index_fd = index_fd
        self._cap = cap_bytes
        self.committed = os.fstat(fd).st_size
        self.stdout_bytes = 0
        self.stderr_bytes = 0
        self.dropped_bytes = 0
        # None while storing; else one of the REASON_* codes.
        self.truncated: int | None = None
        self._indexed_at = -INDEX_EVERY_BYTES
        self._indexed_second = -1
        if self.committed == 0 and self._write([MAGIC]) is None:
            self.committed = len(MAGIC)
        if index_fd >= 0 and os.fstat(index_fd).st_size == 0:
            self._index_write(INDEX_MAGIC)

    def append(self, stream: int, data: bytes, now_ns: int) -> None:
        """Store data (up to the cap; the rest is dropped and the mark written once)."""
        if not data:
            return
        if self.truncated is not None:
            self.dropped_bytes += len(data)
            return
        room = max(0, self._cap - self.stdout_bytes - self.stderr_bytes)
        kept = data[:room]
        records = [HEADER.pack(stream, len(kept), now_ns), kept] if kept else []
        if len(kept) < len(data):
            records += [HEADER.pack(TRUNCATED, 1, now_ns), bytes((REASON_CAP,))]
        start, before = self.committed, (self.stdout_bytes, self.stderr_bytes)
        error = self._write(records)
        if error is not None:
            self.dropped_bytes += len(data)
            self._refused(error, now_ns)
            return
        self.committed += sum(len(r) for r in records)
        if stream == STDOUT:
            self.stdout_bytes += len(kept)
        else:
            self.stderr_bytes += len(kept)
        if len(kept) < len(data):
            self.dropped_bytes += len(data) - len(kept)
            self.truncated = REASON_CAP
        self._index(start, now_ns, before)

    def _write(self, records: "list[bytes]") -> "OSError | None":
        """Append records whole, or cut the file back to the last whole record and return the error."""
        total = sum(len(r) for r in records)
        try:
            written = os.writev(self._fd, records)
            if written < total:
                # A short write to a regular file means the disk filled up; the rest says so or fits.
                written += os.write(self._fd, b"".join(records)[written:])
            if written < total:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            # Shrinking needs no space; should even that fail, readers stop at the last whole record.
            try:
                os.ftruncate(self._fd, self.committed)
            except OSError:
                pass
            return e
        return None

    def _refused(self, error: OSError, now_ns: int) -> None:
        """The disk refused output: stop storing, and mark the point (in the file if it still fits)."""
        self.truncated = REASON_DISK_FULL if error.errno in FULL_ERRNOS else REASON_DISK_ERROR
        # Without room even for the mark, readers learn of the truncation from the holder's reports.
        if self._write([HEADER.pack(TRUNCATED, 1, now_ns), bytes((self.truncated,))]) is None:
            self.committed += HEADER.size + 1

    def _index(self, offset: int, now_ns: int, before: "tuple[int, int]") -> None:
        second = now_ns // _SECOND
        if self._index_fd < 0 or (
            offset - self._indexed_at < INDEX_EVERY_BYTES and second == self._indexed_second
        ):
            return
        if self._index_write(INDEX_ENTRY.pack(now_ns, offset, *before)):
            self._indexed_at, self._indexed_second = offset, second

    def _index_write(self, data: bytes) -> bool:
        try:
            if os.write(self._index_fd, data) == len(data):
                return True
        except OSError:
            pass
        # The index only speeds up readers; without further entries they read more of the spool.
        self._index_fd = -1
        return False
