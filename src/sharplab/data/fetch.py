"""Fetching one file over HTTP(S) safely: resume, length and checksum checks, atomic rename.

:func:`fetch` downloads into ``<dest>.part``; an interrupted download resumes with an HTTP ``Range`` request
(a server that ignores it restarts the file; one that answers with another byte range has the partial
file deleted), an incomplete transfer keeps the ``.part`` file for the next run, and a complete file is
verified against its checksum (:func:`verify`, ``"algo:hex"``) before it is renamed into place (a
mismatch deletes it). A web page served instead of a file (Google Drive's confirmation page) stops with
a message to fetch the file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sharplab.errors import SharplabError

#: bytes read from the connection at a time
CHUNK = 1 << 16


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file with ``hashlib`` algorithm ``algo``, read in chunks (bounded memory)."""
    h = hashlib.new(algo)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str | None) -> tuple[bool, str]:
    """(ok, actual digest) of ``path`` against ``"algo:hex"``; always ok when ``checksum`` is None."""
    if checksum is None:
        return True, ""
    algo, _, want = checksum.partition(":")
    got = file_digest(path, algo)
    return got == want.lower(), got


def fetch(url: str, dest: Path, checksum: str | None = None, timeout: float = 30.0, quiet: bool = False
          ) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed with HTTP Range), verify, rename."""
    if dest.exists() and verify(dest, checksum)[0]:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "sharplab-data/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    host = urllib.parse.urlsplit(url).netloc or url
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part file is already whole
            resp = None
        else:
            raise SharplabError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SharplabError(f"cannot reach {host} ({reason}); check the network connection, or download "
                            f"{url} by hand to {dest}") from None
    if resp is not None:
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            if ctype.startswith("text/html") and not dest.name.endswith(".html"):
                raise SharplabError(f"{host} returned a web page instead of {dest.name} (Google Drive asks "
                                    f"to confirm large files); download {url} in a browser to {dest}, rerun")
            resumed = resp.status == 206
            if resumed and _range_start(resp) != offset:
                part.unlink(missing_ok=True)
                raise SharplabError(f"{host} answered with an unexpected byte range for {dest.name}; the partial "
                                    "file was deleted, run the command again")
            if not resumed:
                offset = 0
            length = _content_length(resp, host, dest.name)
            total = offset + length if length is not None else None
            _copy(resp, part, "ab" if resumed else "wb", offset, total, dest.name, quiet)
        size = part.stat().st_size
        if total is not None and size < total:
            raise SharplabError(f"download of {dest.name} stopped at {size} of {total} bytes; "
                                "run the same command again to resume")
    ok, got = verify(part, checksum)
    if not ok:
        part.unlink()
        raise SharplabError(f"checksum mismatch for {dest.name}: expected {checksum}, got {got}; "
                            "the file was deleted, run the command again")
    os.replace(part, dest)
    return dest


def _content_length(resp, host: str, name: str) -> int | None:
    """The announced length of the body, None when not announced; one line for a garbled header."""
    raw = resp.headers.get("Content-Length")
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit():
        raise SharplabError(f"{host} sent an invalid Content-Length {raw[:40]!r} for {name}; nothing was "
                            "saved, try again later or use another mirror (--base-url)")
    return int(text)


def _range_start(resp) -> int | None:
    cr = resp.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        return int(cr.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _copy(resp, part: Path, mode: str, offset: int, total: int | None, label: str, quiet: bool) -> None:
    from sharplab.progress import progress

    disable = quiet or bool(os.environ.get("CI"))
    with part.open(mode) as f, progress(total=total, initial=offset, unit="B", unit_scale=True, desc=label,
                                        disable=disable, leave=False) as bar:
        try:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
            if isinstance(exc, http.client.IncompleteRead):
                f.write(exc.partial)
