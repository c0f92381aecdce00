"""The LMDB index of the local cache: small, rebuildable records next to the CAS.

Databases in <cache>/index (one LMDB environment, safe for several processes at once):
  ac    action key → result record (outputs with blake3/sha256/size/mode, stats, action id)
  keys  action key → key record (the canonical preimage, kept for `explain`)
  last  action id  → {"current": key, "previous": key} of the latest builds
  stat  absolute path → [size, mtime_ns, ino, ctime_ns, blake3, sha256] (source digest memo)
  used  action key → last use time (wall clock: only for `cache gc` eviction order)
LMDB runs with sync off: a crash of the machine may lose the last transactions but never corrupts
the environment, and a lost index entry is only a cache miss.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import lmdb

SCHEMA = 1
_MAP_SIZE = 1 << 36  # address space reservation, not disk use


def _j(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class Index:
    def __init__(self, root: Path, readonly: bool = False):
        path = root / f"index-v{SCHEMA}"
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=8, sync=False, metasync=False,
                             max_readers=1024, readonly=False, lock=True)
        self.env.reader_check()  # clear reader slots of processes that were killed
        self.ac = self.env.open_db(b"ac")
        self.keys = self.env.open_db(b"keys")
        self.last = self.env.open_db(b"last")
        self.stat = self.env.open_db(b"stat")
        self.used = self.env.open_db(b"used")

    def close(self) -> None:
        self.env.close()

    # -- action cache ---------------------------------------------------------------------
    def get_result(self, key: str) -> dict | None:
        with self.env.begin(db=self.ac) as txn:
            raw = txn.get(key.encode())
        return json.loads(raw) if raw else None

    def get_results(self, keys: Iterable[str]) -> dict[str, dict]:
        out = {}
        with self.env.begin(db=self.ac) as txn:
            for key in keys:
                raw = txn.get(key.encode())
                if raw:
                    out[key] = json.loads(raw)
        return out

    def put_result(self, key: str, result: dict, key_record: dict, action_id: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), _j(result), db=self.ac)
            txn.put(key.encode(), _j(key_record), db=self.keys)
            txn.put(key.encode(), str(time.time()).encode(), db=self.used)
            self._record_last(txn, action_id, key)

    def drop_result(self, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode(), db=self.ac)

    def get_key_record(self, key: str) -> dict | None:
        with self.env.begin(db=self.keys) as txn:
            raw = txn.get(key.encode())
        return json.loads(raw) if raw else None

    # -- history for explain ------------------------------------------------------------------
    def _record_last(self, txn, action_id: str, key: str) -> None:
        raw = txn.get(action_id.encode(), db=self.last)
        entry = json.loads(raw) if raw else {}
        if entry.get("current") != key:
            entry = {"current": key, "previous": entry.get("current")}
            txn.put(action_id.encode(), _j(entry), db=self.last)

    def record_used(self, action_keys: dict[str, str]) -> None:
        """Note that these (action id → key) were used by a build: LRU time and explain history."""
        now = str(time.time()).encode()
        with self.env.begin(write=True) as txn:
            for action_id, key in action_keys.items():
                txn.put(key.encode(), now, db=self.used)
                self._record_last(txn, action_id, key)

    def last_keys(self, action_id: str) -> dict:
        with self.env.begin(db=self.last) as txn:
            raw = txn.get(action_id.encode())
        return json.loads(raw) if raw else {}

    # -- source digest memo ---------------------------------------------------------------
    def get_stats(self, paths: list[str]) -> dict[str, list]:
        out = {}
        with self.env.begin(db=self.stat) as txn:
            for p in paths:
                raw = txn.get(p.encode())
                if raw:
                    out[p] = json.loads(raw)
        return out

    def put_stats(self, entries: dict[str, list]) -> None:
        if not entries:
            return
        with self.env.begin(write=True, db=self.stat) as txn:
            for p, v in entries.items():
                txn.put(p.encode(), _j(v))

    # -- maintenance ------------------------------------------------------------------------
    def all_results(self) -> list[tuple[str, dict, float]]:
        out = []
        with self.env.begin() as txn:
            used = {k.decode(): float(v) for k, v in txn.cursor(db=self.used)}
            for k, v in txn.cursor(db=self.ac):
                out.append((k.decode(), json.loads(v), used.get(k.decode(), 0.0)))
        return out

    def delete_results(self, keys: list[str]) -> None:
        with self.env.begin(write=True) as txn:
            for key in keys:
                for db in (self.ac, self.used):
                    txn.delete(key.encode(), db=db)

    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {name: txn.stat(db)["entries"]
                    for name, db in (("actions", self.ac), ("key_records", self.keys),
                                     ("file_digests", self.stat))}
