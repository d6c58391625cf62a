"""Where a dataset lives — a local folder or a URL — and reading and writing its files there.

Accepted wherever a dataset is named (``--data.root``, ``prep ... --out``, ``stats``, ``evaluate --data.root``)::

    /data/as2m, data/as2m      a local folder (also ``file:///data/as2m``)
    s3://bucket/prefix         S3 or an S3-compatible store (MinIO, Ceph, R2, ...); ``pip install 'audiossl[s3]'``
                               (s3fs). Credentials, region and endpoint come from the standard places, read by
                               botocore: ``AWS_*`` environment variables, ``~/.aws/config`` and ``credentials``,
                               instance or pod roles; a custom endpoint from ``AWS_ENDPOINT_URL_S3`` or
                               ``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the profile).
    gs://bucket/prefix         Google Cloud Storage; ``pip install 'audiossl[gcs]'`` (gcsfs); credentials from
                               ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application-default login or the
                               metadata server.
    https://host/path          read only; any server that answers GET (shards are fetched in Range requests when the
                               server supports them, whole otherwise). ``http://`` too.
    pipe:COMMAND               read only, WebDataset's form: COMMAND prints a file on its stdout. ``{}`` in COMMAND is
                               replaced by the file's path inside the dataset (``manifest.json``,
                               ``train/train-000000.tar``); without ``{}`` the path is appended after a ``/``
                               (``pipe:curl -sf https://host/ds`` reads ``https://host/ds/manifest.json``).

The manifest is read from ``ROOT/manifest.json`` and every path in it resolves relative to ``ROOT``. Anything that
looks like a URL but is none of these (``ftp://...``, ``az://...``, ``s3:/bucket`` with a slash lost) is an error:
a URL never silently becomes a local folder. Nothing here logs credentials or signed URLs' queries.

Faults: every remote read and write is retried on transient errors (connection resets, time-outs, 5xx, throttling)
(an https:// request that gets no bytes for ``AUDIOSSL_HTTP_TIMEOUT`` seconds, default 60, is one that timed out)
``IOOptions.retries`` times with exponential back-off and jitter; a missing object or a refused permission is not
retried. Shards are streamed in chunks by a background thread that keeps ``readahead_chunks`` chunks ahead of the
reader; a failed chunk is fetched again from its offset (a pipe is re-run and the bytes already read skipped).
With ``IOOptions.cache_dir`` every shard read in full is kept there, least recently used ones removed beyond
``cache_max_bytes``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from audiossl.errors import InputPathError, OutputPathError, UserError

log = logging.getLogger("audiossl.data")

READ_SCHEMES = ("s3", "gs", "gcs", "http", "https", "pipe")
WRITE_SCHEMES = ("s3", "gs", "gcs")
_EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"), "http": ("aiohttp", "http"),
           "https": ("aiohttp", "http")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_SAFE_REL = re.compile(r"[A-Za-z0-9._/-]+")  # what a manifest path may hold when it is pasted into a shell command
_MAX_WAIT = 30.0
_WARN_RETRIES = 20  # retry warnings per process; then only the counts
HTTP_TIMEOUT = 60.0  # seconds an http(s) connect or read may wait for bytes (env AUDIOSSL_HTTP_TIMEOUT)


class StorageError(UserError, OSError):
    """A URL that cannot be used as asked, or a remote file that could not be read or written (after retries)."""


class UnsupportedURLError(StorageError, ValueError):
    """A URL of a scheme audiossl does not read or write (or a malformed one)."""


# --- names: URLs and local paths -----------------------------------------------------------------------------------
def scheme(text: str | os.PathLike) -> str | None:
    """The URL scheme of ``text`` (lower case), ``"file"`` for ``file://``, ``None`` for a plain local path.

    ``scheme://...``, ``pipe:...`` and a known scheme followed by ``:`` (``s3:/b``, a slash lost) are URLs; a local
    name that merely holds a colon (``take:2.wav``) is not."""
    text = os.fspath(text)
    m = _SCHEME.match(text)
    if not m:
        return None
    name = m.group(1).lower()
    rest = text[m.end():]
    if rest.startswith("//") or name == "pipe" or name in READ_SCHEMES or name == "file":
        return name
    return None


def is_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a remote location (``file://`` is local)."""
    s = scheme(text)
    return s is not None and s != "file"


def _refuse_url(path, what: str, error) -> None:
    """A URL where a local path is needed is an error, never a folder named ``s3:``."""
    if is_url(path):
        raise error(f"{what} {path} is a URL; this needs a local path (datasets may live at s3://, gs://, https:// "
                    "and pipe: URLs: `prep --out` and `--data.root` accept them)")


def input_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing file; ``InputPathError`` naming ``what`` otherwise."""
    _refuse_url(path, what, InputPathError)
    path = Path(path)
    if path.is_dir():
        raise InputPathError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise InputPathError(f"{what} {path} does not exist")
    return path


def output_dir(path: str | Path, what: str = "--out", create: bool = True) -> Path:
    """``path`` as a folder to write into (created unless ``create=False``); a clear error when a file is in the way
    or ``path`` is a URL."""
    _refuse_url(path, what, OutputPathError)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file; give a folder path (it is created if missing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{what} {path}: {parent} is a file, not a folder")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def output_file(path: str | Path, what: str = "--out", inputs: tuple = (), create: bool = True) -> Path:
    """``path`` as a file to write (its folder created); refuses a folder, a URL and any of ``inputs``."""
    _refuse_url(path, what, OutputPathError)
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file path")
    if path.exists() and any(Path(i).exists() and path.samefile(i) for i in inputs):
        raise OutputPathError(f"{what} {path} is the input file; refusing to overwrite it")
    output_dir(path.parent, f"the folder of {what}", create)
    return path


def local_path(text: str | os.PathLike) -> str:
    """A local path from a plain path or a ``file://`` URL."""
    text = os.fspath(text)
    return text[len("file://"):] if text.lower().startswith("file://") else text


def check_url(url: str, write: bool = False, what: str = "the dataset") -> str:
    """The scheme of ``url`` after checking that audiossl can read (or ``write``) it and the package it needs is
    installed; an :class:`UnsupportedURLError` that says what to do otherwise."""
    s = scheme(url)
    if s is None or s == "file":
        return "file"
    rest = url[len(s) + 1:]
    if s not in READ_SCHEMES:
        raise UnsupportedURLError(
            f"{what} {url}: {s}:// URLs are not supported; use a local folder or an s3://, gs://, https:// or pipe: "
            "URL (a URL is never taken for a local folder)")
    if s != "pipe" and (not rest.startswith("//") or len(rest.strip("/")) == 0):
        raise UnsupportedURLError(f"{what} {url} is not a complete URL: write {s}://BUCKET-OR-HOST/PATH")
    if s == "pipe" and not rest.strip():
        raise UnsupportedURLError(f"{what} {url}: a pipe: URL needs a command, e.g. pipe:curl -sf https://host/ds")
    if write and s not in WRITE_SCHEMES:
        raise UnsupportedURLError(
            f"{what} {url}: {s}: URLs are read-only here; write to a local folder, s3:// or gs:// and serve that")
    if s in _EXTRAS:
        module, extra = _EXTRAS[s]
        try:
            __import__(module)
        except ImportError:
            raise UnsupportedURLError(
                f"{what} {url}: {s}:// URLs need the {module} package: pip install 'audiossl[{extra}]'") from None
    return s


def join(root: str | os.PathLike, rel: str) -> str:
    """``rel`` (a ``/``-separated path inside a dataset) under ``root``: a local path, a URL or a pipe command."""
    root = os.fspath(root)
    s = scheme(root)
    if s is None or s == "file":
        return os.path.join(local_path(root), *rel.split("/"))
    if s == "pipe":
        if not _SAFE_REL.fullmatch(rel) or ".." in rel.split("/"):
            raise UnsupportedURLError(f"{rel!r} cannot go into the pipe: command {root!r}: a path in a dataset "
                                      "read through a command may only hold letters, digits and . _ - /")
        cmd = root[len("pipe:"):]
        if "{}" in cmd:
            return "pipe:" + cmd.replace("{}", rel)
        return "pipe:" + cmd + ("" if cmd.endswith("/") else "/") + rel
    return root.rstrip("/") + "/" + rel


def display_name(root: str | os.PathLike) -> str:
    """The last part of a dataset's name, for progress bars and messages."""
    text = os.fspath(root).rstrip("/")
    return text.rsplit("/", 1)[-1] or text


def redact(url: str) -> str:
    """A URL without its query string (signed URLs carry credentials there)."""
    return url.split("?", 1)[0] + ("?..." if "?" in url else "")


# --- retries -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IOOptions:
    """How remote files are read: retries and back-off, chunking and read-ahead, the optional local shard cache.

    Memory: a remote stream holds at most ``readahead_chunks + 2`` chunks (queued, being read, being fetched); a
    training reader has ``open_shards`` streams plus the ones it prefetches, about 100 MB with the defaults."""

    retries: int = 5  # attempts after the first, per request
    retry_wait: float = 1.0  # seconds before the first retry; doubled each time (x0.5-1.5 jitter), at most 30 s
    chunk_bytes: int = 4 << 20  # one ranged GET
    readahead_chunks: int = 1  # chunks a stream holds ready ahead of its reader (one more is being fetched)
    cache_dir: str | None = None
    cache_max_bytes: int = 50 << 30

    def __post_init__(self):
        if self.retries < 0 or self.retry_wait < 0 or self.chunk_bytes < 1 or self.readahead_chunks < 1:
            raise ValueError(f"bad IOOptions {self}")


class IOCounters:
    """What one process's reads cost: retries, shards given up on, cache hits, bytes fetched (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def __getstate__(self):  # a stream that holds counters may be sent to DataLoader workers
        return {"counts": Counter(self.counts)}

    def __setstate__(self, state):
        self._lock = threading.Lock()
        self.counts = state["counts"]


_warned = 0
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, UserError, ImportError)


def with_retries(what: str, fn: Callable, options: IOOptions, counters: IOCounters | None = None):
    """``fn()``, retried on transient errors (every exception but a missing file, a refused permission, a user
    error) with exponential back-off; the last error is raised as a :class:`StorageError` naming ``what``."""
    for attempt in range(options.retries + 1):
        try:
            return fn()
        except _PERMANENT:
            raise
        except Exception as e:
            if attempt == options.retries:
                raise StorageError(f"{what}: {type(e).__name__}: {e} (gave up after {attempt + 1} attempts)") from e
            if counters is not None:
                counters.add("retries")
            wait = min(_MAX_WAIT, options.retry_wait * 2**attempt) * random.uniform(0.5, 1.5)
            global _warned
            if _warned < _WARN_RETRIES:  # a few per process; the counters hold them all
                _warned += 1
                log.warning("%s: %s: %s; retrying in %.2f s (%d/%d)", what, type(e).__name__, e, wait, attempt + 1,
                            options.retries)
            time.sleep(wait)
    raise AssertionError("unreachable")


# --- whole files ---------------------------------------------------------------------------------------------------
def filesystem(url: str):
    """The fsspec file system for ``url`` (one per process and scheme; credentials from the standard places)."""
    s = check_url(url)
    import fsspec

    kwargs = {}
    if s in ("http", "https"):
        # aiohttp's default is 5 minutes for a whole request and no read limit: a stalled connection would hold a
        # reader that long before it is retried
        import aiohttp

        t = float(os.environ.get("AUDIOSSL_HTTP_TIMEOUT") or HTTP_TIMEOUT)
        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)}
    return fsspec.filesystem({"gcs": "gs"}.get(s, s), **kwargs)


def _pipe_read_all(url: str) -> bytes:
    from webdataset.gopen import gopen

    stream = gopen(url, "rb")
    try:
        return stream.read()
    finally:
        stream.close()  # raises OSError for a non-zero exit status


def read_bytes(url: str, options: IOOptions | None = None, counters: IOCounters | None = None) -> bytes:
    """The whole file at ``url`` (a local path or a URL); ``FileNotFoundError`` when it does not exist."""
    options = options or IOOptions()
    s = scheme(url)
    if s is None or s == "file":
        with open(local_path(url), "rb") as f:
            return f.read()
    if s == "pipe":
        return with_retries(f"reading {url}", lambda: _pipe_read_all(url), options, counters)
    fs = filesystem(url)
    return with_retries(f"reading {redact(url)}", lambda: fs.cat_file(url), options, counters)


def write_bytes(url: str, data: bytes, options: IOOptions | None = None) -> None:
    """Store ``data`` as the object ``url`` (s3://, gs://): one PUT, so readers see the old object or the new one."""
    check_url(url, write=True)
    fs = filesystem(url)
    with_retries(f"writing {redact(url)}", lambda: fs.pipe_file(url, data), options or IOOptions())


def put_file(local: str | os.PathLike, url: str, options: IOOptions | None = None) -> None:
    """Upload the local file ``local`` as ``url``; the object appears only once the upload is complete."""
    check_url(url, write=True)
    fs = filesystem(url)
    with_retries(f"uploading {local} to {redact(url)}", lambda: fs.put_file(os.fspath(local), url),
                 options or IOOptions())


def exists(url: str, options: IOOptions | None = None) -> bool:
    s = scheme(url)
    if s is None or s == "file":
        return os.path.exists(local_path(url))
    fs = filesystem(url)
    return bool(with_retries(f"checking {redact(url)}", lambda: fs.exists(url), options or IOOptions()))


def remove(urls: list[str], options: IOOptions | None = None) -> None:
    """Delete the objects ``urls`` (missing ones are fine)."""
    if not urls:
        return
    fs = filesystem(urls[0])
    for url in urls:
        try:
            with_retries(f"deleting {redact(url)}", lambda u=url: fs.rm_file(u), options or IOOptions())
        except FileNotFoundError:
            pass


def glob(pattern_url: str, options: IOOptions | None = None) -> list[str]:
    """Objects matching ``pattern_url`` (``*`` within one path part), as full URLs."""
    s = check_url(pattern_url)
    fs = filesystem(pattern_url)
    fs.invalidate_cache()
    found = with_retries(f"listing {redact(pattern_url)}", lambda: fs.glob(pattern_url), options or IOOptions())
    prefix = {"gcs": "gs"}.get(s, s) + "://"
    return sorted(p if "://" in p else prefix + p for p in found)


# --- streams -------------------------------------------------------------------------------------------------------
class _RangeSource:
    """An object read by offset with ranged GETs (fsspec ``cat_file``); whole when the server ignores ranges."""

    def __init__(self, url: str, size: int | None):
        self.url, self.size = url, size
        self._fs = filesystem(url)
        self._whole: bytes | None = None

    def read_at(self, offset: int, n: int) -> bytes:
        if self._whole is not None:
            return self._whole[offset : offset + n]
        if self.size is None:
            self.size = int(self._fs.size(self.url))
        if offset >= self.size:
            return b""
        end = min(offset + n, self.size)
        data = self._fs.cat_file(self.url, start=offset, end=end)
        if len(data) == self.size and end - offset != self.size:  # the server sent the whole object
            self._whole = data
            return data[offset:end]
        if len(data) != end - offset:
            raise OSError(f"short read: {len(data)} of {end - offset} bytes at offset {offset}")
        return data

    def close(self) -> None:
        self._whole = None


class _PipeSource:
    """A ``pipe:`` command's stdout; re-run from the start (skipping what was read) after a failure."""

    def __init__(self, url: str):
        self.url = url
        self._stream = None
        self._at = 0

    def _restart(self, offset: int) -> None:
        from webdataset.gopen import gopen

        self.close()
        self._stream, self._at = gopen(self.url, "rb"), 0
        while self._at < offset:
            skipped = self._stream.read(min(1 << 20, offset - self._at))
            if not skipped:
                raise OSError(f"the command's output ended at {self._at} bytes, before offset {offset}")
            self._at += len(skipped)

    def read_at(self, offset: int, n: int) -> bytes:
        if self._stream is None or self._at != offset:
            self._restart(offset)
        try:
            parts, got = [], 0
            while got < n:
                block = self._stream.read(n - got)
                if not block:
                    self._stream.close()  # an exit status other than 0 raises OSError here
                    break
                parts.append(block)
                got += len(block)
        except BaseException:
            self.close()
            raise
        self._at += got
        return b"".join(parts)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stream.close()
                self._stream.proc.kill()
                self._stream.proc.wait()
            except Exception:
                pass
            self._stream = None


_EOF = object()


class _RemoteStream(io.RawIOBase):
    """A read-only stream over a remote object: a daemon thread fetches chunks (with retries) up to
    ``readahead_chunks`` ahead of the reader and, with a cache path, writes the object there as it goes (finishing
    the download even when the reader stops early, then renaming it into place)."""

    def __init__(self, source, options: IOOptions, counters: IOCounters, cache_path: str | None = None,
                 on_cached: Callable[[str], None] | None = None):
        super().__init__()
        self._source, self._options, self._counters = source, options, counters
        self._cache_path, self._on_cached = cache_path, on_cached
        self._queue: queue.Queue = queue.Queue(maxsize=options.readahead_chunks)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._run, name="audiossl-fetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        part = None
        try:
            if self._cache_path is not None:
                part = f"{os.path.dirname(self._cache_path)}/.{os.path.basename(self._cache_path)}." \
                       f"{os.getpid()}.{threading.get_ident()}.part"
                sink = open(part, "wb")
            offset, n = 0, self._options.chunk_bytes
            url = redact(getattr(self._source, "url", "?"))
            while True:
                if self._stop.is_set() and part is None:
                    return
                data = with_retries(f"reading {url} at byte {offset}", lambda o=offset: self._source.read_at(o, n),
                                    self._options, self._counters)
                if not data:
                    break
                offset += len(data)
                self._counters.add("bytes", len(data))
                if part is not None:
                    sink.write(data)
                if not self._stop.is_set():
                    self._put(data)
            if part is not None:
                sink.close()
                os.replace(part, self._cache_path)
                part = None
                if self._on_cached is not None:
                    self._on_cached(self._cache_path)
            self._put(_EOF)
        except StorageError as e:  # handed to the reader, which raises it
            self._put(e)
        except BaseException as e:  # a missing object, a refused permission (not retried): the same, named
            self._put(StorageError(f"reading {redact(getattr(self._source, 'url', '?'))}: {type(e).__name__}: {e}"))
        finally:
            self._source.close()
            if part is not None:
                try:
                    sink.close()
                    os.unlink(part)
                except OSError:
                    pass

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if not len(self._buffer):
            if self._done:
                return 0
            item = self._queue.get()
            if item is _EOF:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._buffer = memoryview(item)
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
        super().close()


class ShardReader:
    """Opens shards for one stream: local files directly; URLs through a read-ahead :class:`_RemoteStream` (or the
    local cache). :meth:`prefetch` starts fetching a shard before it is opened."""

    max_waiting = 16  # prefetched streams not opened yet

    def __init__(self, options: IOOptions | None = None, counters: IOCounters | None = None):
        self.options = options or IOOptions()
        self.counters = counters or IOCounters()
        self._prefetched: dict[str, _RemoteStream] = {}

    def _cache_path(self, url: str) -> str:
        digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])[-80:]
        return os.path.join(self.options.cache_dir, f"{digest}-{name}")

    def _start(self, url: str, size: int | None):
        s = scheme(url)
        if s is None or s == "file":
            return open(local_path(url), "rb")
        cache = None
        if self.options.cache_dir and (size is None or size <= self.options.cache_max_bytes):
            cache = self._cache_path(url)
            try:
                if size is None or os.path.getsize(cache) == size:
                    f = open(cache, "rb")
                    os.utime(cache)  # most recently used
                    self.counters.add("cache_hits")
                    return f
                os.unlink(cache)  # a stale or damaged copy
            except FileNotFoundError:
                pass
            os.makedirs(self.options.cache_dir, exist_ok=True)
            self.counters.add("cache_misses")
        source = _PipeSource(url) if s == "pipe" else _RangeSource(url, size)
        return _RemoteStream(source, self.options, self.counters, cache,
                             lambda path: evict(self.options.cache_dir, self.options.cache_max_bytes, keep=path))

    def prefetch(self, url: str, size: int | None = None) -> None:
        """Start fetching ``url`` now (URLs only; at most :attr:`max_waiting` waiting), so that :meth:`open` finds it
        under way."""
        if is_url(url) and url not in self._prefetched and len(self._prefetched) < self.max_waiting:
            try:
                stream = self._start(url, size)
            except Exception:  # it is opened (and its error handled) again when needed
                return
            self._prefetched[url] = stream

    def open(self, url: str, size: int | None = None):
        """A binary file object positioned at the start of ``url``."""
        stream = self._prefetched.pop(url, None)
        if stream is not None:
            return stream
        if is_url(url):
            check_url(url)
        return self._start(url, size)

    def close(self) -> None:
        for stream in self._prefetched.values():
            stream.close()
        self._prefetched.clear()


def evict(cache_dir: str, max_bytes: int, keep: str | None = None) -> None:
    """Remove the least recently used files of ``cache_dir`` until it holds at most ``max_bytes`` (``keep`` stays);
    leftovers of interrupted downloads older than an hour go too. Several processes may share the folder."""
    entries = []
    now = time.time()
    try:
        names = os.listdir(cache_dir)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(cache_dir, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if name.startswith("."):
            if name.endswith(".part") and now - st.st_mtime > 3600:
                _unlink_quietly(path)
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path == keep:
            continue
        _unlink_quietly(path)
        total -= size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
