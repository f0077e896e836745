"""``sharplab store copy SRC DST``: every run and its history from one store into another (SQLite <-> PostgreSQL)."""

from __future__ import annotations

from sharplab.runner.store.base import StoreError


def copy_store(src: str, dst: str) -> tuple[int, int]:
    """Copy every row of store ``src`` into ``dst`` (each a folder, ``sqlite:///FILE`` or ``postgresql://``
    URL), in one transaction on ``dst``. Runs ``dst`` holds already with the same contents are kept; if any
    differ nothing is copied (:class:`StoreError`). Returns (runs copied, runs already there)."""
    from sharplab.runner.store import open_location

    if src == dst:
        raise StoreError(f"store copy: source and destination are the same ({src})")
    with open_location(src, readonly=True) as source:
        runs, epochs = source.raw_rows()
        src_name = source.location
    with open_location(dst, readonly=False) as dest:
        if src_name == dest.location:
            raise StoreError(f"store copy: source and destination are the same ({src_name})")
        held = [r["run_id"] for r in runs if r["status"] == "running"]
        if held:
            print(f"note: {len(held)} runs are running in {src_name}; they are copied as running and taken over "
                  "in the destination once their heartbeat is old")
        return dest.insert_raw(runs, epochs)
