"""Read an SQLite WAL file the way SQLite's recovery does, and find what that recovery would drop in silence.

Format (https://www.sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page size,
checkpoint sequence, salt-1, salt-2, checksum-1, checksum-2), then frames of a 24-byte header (page
number, database size after commit, non-zero only in a commit frame, salt-1, salt-2, checksum-1,
checksum-2) and one page. Integers are big-endian. The checksums are cumulative: the header's covers its
first 24 bytes, and each frame's continues from the one before over the frame's first 8 header bytes and
its page, in 32-bit words of the byte order the magic names.

On open, SQLite keeps the frames up to the last commit frame before the first frame that does not
validate (wrong salts, page number 0, wrong checksum) and ignores the rest without a word; an invalid
header makes it ignore the whole file. That is right for a torn last write, and for stale frames left
from before a checkpoint restarted the log (they carry the old salts). It is wrong when a damaged frame
hides later transactions that were committed whole, and ``scan_wal`` tells those cases apart:

- a frame *continues the chain* when its checksum continues from the checksum its predecessor stores
  (or, should only that field be damaged, from the checksum of the predecessor's content), so damage
  breaks the chain only locally;
- a frame after the stop belongs to the *current* generation of the log unless it looks stale: salts of
  an older generation, a non-zero page number, and no continuation of a current predecessor's chain.
  So neither a flipped salt byte nor a zeroed frame header passes for a stale frame.

A commit frame of the current generation after the stop that continues the chain is a committed
transaction SQLite would drop; so is one whose predecessor's header is gone (wrong salts, page number
0), since nothing is left to check its chain against and a crash never leaves an intact frame behind a
damaged one. A damaged or torn commit frame is not counted: a crash between writing
a frame's header and its page leaves exactly that, so damage confined to the last transaction cannot be
told from a crash during it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_BYTES = 32
FRAME_HEADER_BYTES = 24
_MAGIC = 0x377F0682  # with the low bit set (0x377F0683) the checksum words are big-endian
_VERSION = 3007000
_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class WalScan:
    size: int
    # Why SQLite would ignore the whole file; None when the header is valid or the file is empty.
    header_problem: str | None
    # Frames SQLite keeps (up to its last valid commit frame), how many of them commit, and where they end.
    kept_frames: int
    kept_commits: int
    kept_end: int
    # The first frame of the current generation that SQLite rejects, and why; None when the log simply ends.
    bad_frame: int | None
    bad_reason: str | None
    # Intact commit frames of the current generation after the stop: committed transactions SQLite drops.
    lost_commits: int
    # Bytes after ``kept_end`` that SQLite drops and that are not stale leftovers from before a reset.
    dropped_bytes: int
    # A header SQLite rejects, followed by non-zero bytes: which of them are frames cannot be told, and any
    # could be a committed transaction.
    header_hides_frames: bool = False


def wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes long), continuing from ``(s0, s1)``."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def scan_wal(path: Path) -> WalScan:
    """Scan the WAL file at ``path``; a missing file is an empty log."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    return scan_wal_bytes(data)


def scan_wal_bytes(data: bytes) -> WalScan:
    size = len(data)
    if size < HEADER_BYTES:
        # SQLite ignores a file shorter than its header: whatever a cut there removed is gone.
        problem = f"only {size} bytes, shorter than the {HEADER_BYTES}-byte header" if size else None
        return WalScan(size, problem, 0, 0, 0, None, None, 0, size)
    magic, version, page_size, _, salt1, salt2, c0, c1 = struct.unpack_from(">8I", data)
    big_endian = bool(magic & 1)
    problem = _header_problem(data[:HEADER_BYTES], magic, version, page_size, big_endian)
    if problem is not None:
        body = size - HEADER_BYTES
        hides = data.count(0, HEADER_BYTES) < body
        return WalScan(size, problem, 0, 0, 0, None, None, 0, body, header_hides_frames=hides)

    frame_bytes: int = FRAME_HEADER_BYTES + page_size
    frames = (size - HEADER_BYTES) // frame_bytes

    def start(n: int) -> int:
        return HEADER_BYTES + (n - 1) * frame_bytes

    def frame(n: int) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
        """Frame ``n`` (from 1): page number, commit size, salts and stored checksum."""
        page, commit, f_salt1, f_salt2, f_c0, f_c1 = struct.unpack_from(">6I", data, start(n))
        return page, commit, (f_salt1, f_salt2), (f_c0, f_c1)

    def checksum(n: int, seed: tuple[int, int]) -> tuple[int, int]:
        """Frame ``n``'s checksum computed from ``seed``, over its first 8 header bytes and its page."""
        covered = data[start(n) : start(n) + 8] + data[start(n) + FRAME_HEADER_BYTES : start(n) + frame_bytes]
        return wal_checksum(covered, *seed, big_endian)

    def stored_before(n: int) -> tuple[int, int]:
        return (c0, c1) if n == 1 else frame(n - 1)[3]

    def continues(n: int) -> bool:
        """Whether frame ``n``'s checksum continues the chain: from the checksum its predecessor stores, or,
        should only that field of the predecessor be damaged, from the checksum of the predecessor's content."""
        stored = frame(n)[3]
        return checksum(n, stored_before(n)) == stored or (
            n > 1 and checksum(n, checksum(n - 1, stored_before(n - 1))) == stored
        )

    def unreadable_header(n: int) -> bool:
        """Whether frame ``n``'s header lost what chains the next frame to it: its salts or page number."""
        page, _, f_salts, _ = frame(n)
        return f_salts != salts or page == 0

    def looks_stale(page: int, f_salts: tuple[int, int]) -> bool:
        """Whether a frame can be a leftover of an older generation: salt-1 counts restarts, so it differs
        from the header's, and salt-2 is random, so it differs too, and neither is zero but once in 2**32.
        A frame with a salt word equal to the current one, or zero, or page number 0, is damaged."""
        return page != 0 and all(old not in (new, 0) for old, new in zip(f_salts, salts, strict=True))

    # SQLite's own pass: a running checksum, up to the first frame that does not validate.
    salts = (salt1, salt2)
    running = (c0, c1)
    kept_frames = kept_commits = 0
    stop: int | None = None
    stop_reason: str | None = None
    for n in range(1, frames + 1):
        page, commit, f_salts, stored = frame(n)
        if f_salts != salts:
            stop, stop_reason = n, "salt mismatch"
        elif page == 0:
            stop, stop_reason = n, "page number 0"
        elif checksum(n, running) != stored:
            stop, stop_reason = n, "checksum mismatch"
        if stop is not None:
            break
        running = stored
        if commit:
            kept_frames, kept_commits = n, kept_commits + 1

    # Past the stop: which frames belong to the current generation, and which of them are intact commits.
    # Checksums are only computed where they decide something, so a long stale tail costs little.
    last_current = frames if stop is None else stop - 1
    lost_commits = 0
    if stop is not None:
        previous_current = True
        for n in range(stop, frames + 1):
            page, commit, f_salts, _ = frame(n)
            if f_salts == salts:
                current = True
                lost_commits += bool(commit and page and (continues(n) or (n > stop and unreadable_header(n - 1))))
            else:
                chained = previous_current and page != 0 and continues(n)
                current = chained or not looks_stale(page, f_salts)
                lost_commits += bool(chained and commit)
            if current:
                last_current = n
            previous_current = current

    # A partial frame after the current ones is a cut or a torn last write, unless its header shows a
    # leftover of an older generation (a cut inside the stale frames).
    current_end = HEADER_BYTES + last_current * frame_bytes
    tail = data[start(frames + 1) :]
    if last_current == frames and tail:
        readable = len(tail) >= FRAME_HEADER_BYTES
        page, _, f_salt1, f_salt2, _, _ = struct.unpack_from(">6I", tail) if readable else (0, 0, 0, 0, 0, 0)
        if not looks_stale(page, (f_salt1, f_salt2)):
            current_end = size
    kept_end = HEADER_BYTES + kept_frames * frame_bytes
    bad_frame = stop if stop is not None and last_current >= stop else None
    return WalScan(
        size=size,
        header_problem=None,
        kept_frames=kept_frames,
        kept_commits=kept_commits,
        kept_end=kept_end,
        bad_frame=bad_frame,
        bad_reason=stop_reason if bad_frame is not None else None,
        lost_commits=lost_commits,
        dropped_bytes=current_end - kept_end,
    )


def _header_problem(header: bytes, magic: int, version: int, page_size: int, big_endian: bool) -> str | None:
    """Why SQLite would ignore (or refuse) a WAL with this header, in the order SQLite checks."""
    if magic & ~1 != _MAGIC or page_size & (page_size - 1) or not 512 <= page_size <= 65536:
        return f"not a WAL header (magic {magic:#010x}, page size {page_size})"
    if wal_checksum(header[:24], 0, 0, big_endian) != struct.unpack_from(">2I", header, 24):
        return "header checksum mismatch"
    if version != _VERSION:
        return f"unknown WAL format version {version}"
    return None
