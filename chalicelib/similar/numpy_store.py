"""The default local vector store: exact cosine search over one float32 matrix, kept as .npy files.

Why not Qdrant's embedded mode here: it is slow on a collection of 100k (minutes to persist, 25–40 ms a query),
while a (100k × 80) float32 matrix-vector product plus ``argpartition`` answers in a few milliseconds, exactly.
Qdrant stays the production store (a server on EKS); both pass the same contract tests.

Layout under the folder: ``CURRENT`` names a generation folder holding ``vectors.npy``, ``ids.npy``,
``payloads.json`` and ``meta.json``. A flush writes a new generation and swaps ``CURRENT`` atomically, so a
reader (the API) never sees half an index; readers reload when ``CURRENT`` changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chalicelib.similar.vectors import DimensionMismatch, Hit, check_upsert, query_vector

POINTER = "CURRENT"
AGE_DTYPE = "U10"  # a fixed-width array compares to an age band in one vector operation


class NumpyStore:
    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self._generation: str | None = None  # what is loaded
        self._dimension: int | None = None
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._payloads: list[dict[str, Any]] = []
        self._ages = np.zeros(0, dtype=AGE_DTYPE)
        self._by_band: dict[str, np.ndarray] = {}  # row numbers per age band, built on first use
        self._pending: list[tuple[Sequence[str], np.ndarray, Sequence[Mapping[str, Any]]]] = []
        self._dirty = False

    # -- reading ------------------------------------------------------------------------------------------------
    def _current(self) -> str | None:
        try:
            return (self.folder / POINTER).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _refresh(self) -> None:
        """Load the on-disk generation if it changed since the last load (and nothing unsaved is held)."""
        generation = self._current()
        if generation == self._generation or self._dirty or self._pending:
            return
        if generation is None:
            self._clear()
            return
        where = self.folder / generation
        meta = json.loads((where / "meta.json").read_text())
        self._vectors = np.load(where / "vectors.npy")
        self._ids = np.load(where / "ids.npy").tolist()
        self._payloads = json.loads((where / "payloads.json").read_text())
        self._row = {pid: i for i, pid in enumerate(self._ids)}
        self._ages = np.array([str(p.get("age")) for p in self._payloads], dtype=AGE_DTYPE)
        self._by_band = {}
        self._dimension = int(meta["dimension"])
        self._generation = generation

    def count(self) -> int:
        with self._lock:
            self._refresh()
            self._apply_pending()
            return len(self._ids)

    def search(self, vector: np.ndarray, k: int, age_band: str | None = None) -> list[Hit]:
        with self._lock:
            self._refresh()
            self._apply_pending()
            missing = "no index yet: run `readmit index` (into $READMIT_INDEX_DIR or $READMIT_HOME/index)"
            query = query_vector(vector, self._dimension if self._ids else None, missing, "the index")
            # einsum is numpy's own single-threaded SIMD loop: on a busy 2-core host it beats a BLAS gemv 3-4x.
            scores = np.einsum("ij,j->i", self._vectors, query)
            rows = self._band_rows(age_band) if age_band is not None else None
            if rows is not None:
                scores = scores[rows]
            k = min(k, len(scores))
            if k == 0:
                return []
            top = np.argpartition(scores, len(scores) - k)[len(scores) - k :]
            top = top[np.argsort(-scores[top], kind="stable")]
            found = rows[top] if rows is not None else top
            return [Hit(self._ids[i], float(s), self._payloads[i]) for i, s in zip(found, scores[top], strict=True)]

    def _band_rows(self, age_band: str) -> np.ndarray:
        rows = self._by_band.get(age_band)
        if rows is None:
            rows = self._by_band[age_band] = np.flatnonzero(self._ages == age_band)
        return rows

    # -- writing ------------------------------------------------------------------------------------------------
    def ensure(self, dimension: int) -> None:
        with self._lock:
            self._refresh()
            if self._dimension is None:
                self._dimension = dimension
                self._vectors = np.zeros((0, dimension), dtype=np.float32)
            elif self._dimension != dimension:
                raise DimensionMismatch(f"{self.folder} holds {self._dimension}-d vectors, not {dimension}-d")

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> None:
        check_upsert(ids, vectors, payloads)
        with self._lock:
            self.ensure(vectors.shape[1])
            self._pending.append((list(ids), np.asarray(vectors, dtype=np.float32), list(payloads)))
            self._dirty = True

    def _apply_pending(self) -> None:
        """Merge pending upserts: known ids overwrite their row, new ids append (in one concatenation)."""
        if not self._pending:
            return
        vectors = self._vectors
        new_vectors: list[np.ndarray] = []
        for ids, block, payloads in self._pending:
            for j, pid in enumerate(ids):
                row = self._row.get(pid)
                if row is None:
                    self._row[pid] = len(self._ids)
                    self._ids.append(pid)
                    self._payloads.append(dict(payloads[j]))
                    new_vectors.append(block[j])
                elif row < len(vectors):
                    vectors[row] = block[j]
                    self._payloads[row] = dict(payloads[j])
                else:  # a new id seen twice in the pending upserts: the later one wins
                    new_vectors[row - len(vectors)] = block[j]
                    self._payloads[row] = dict(payloads[j])
        if new_vectors:
            vectors = np.concatenate([vectors, np.stack(new_vectors)])
        self._vectors = vectors
        self._ages = np.array([str(p.get("age")) for p in self._payloads], dtype=AGE_DTYPE)
        self._by_band = {}
        self._pending.clear()

    def flush(self) -> None:
        with self._lock:
            self._apply_pending()
            if not self._dirty:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            generation = uuid.uuid4().hex
            tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=".tmp-"))
            np.save(tmp / "vectors.npy", np.ascontiguousarray(self._vectors))
            np.save(tmp / "ids.npy", np.array(self._ids, dtype="U32"))
            (tmp / "payloads.json").write_text(json.dumps(self._payloads, separators=(",", ":")))
            (tmp / "meta.json").write_text(json.dumps({"dimension": self._dimension, "count": len(self._ids)}))
            tmp.rename(self.folder / generation)
            previous = self._current()
            pointer = self.folder / f".{POINTER}.{generation}"
            pointer.write_text(generation)
            os.replace(pointer, self.folder / POINTER)
            if previous:
                shutil.rmtree(self.folder / previous, ignore_errors=True)
            self._generation, self._dirty = generation, False

    def reset(self) -> None:
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / POINTER).unlink()
            if self.folder.exists():
                for child in self.folder.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
            self._clear()
