"""Patient history features: what a patient's earlier encounters tell us (never their outcomes), accumulated one
encounter at a time online (the history store) or over a whole file in a batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from chalicelib.features.table import FACILITY_DISCHARGES, Columns


@dataclass(slots=True)
class PatientHistory:
    """What a patient's earlier encounters tell us. Ordered by encounter_id; outcomes never enter."""

    encounters: int = 0
    emergency_admissions: int = 0
    days: int = 0
    max_inpatient: int = 0
    transfers_to_facility: int = 0

    def add(self, admission_type_id: int, time_in_hospital: int, number_inpatient: int, discharge: int) -> None:
        self.encounters += 1
        self.emergency_admissions += admission_type_id in (1, 7)  # emergency or trauma centre, as elsewhere
        self.days += time_in_hospital
        self.max_inpatient = max(self.max_inpatient, number_inpatient)
        self.transfers_to_facility += discharge in FACILITY_DISCHARGES

    def add_record(self, record: Mapping[str, Any]) -> None:
        self.add(
            record["admission_type_id"],
            record["time_in_hospital"],
            record["number_inpatient"],
            record["discharge_disposition_id"],
        )

    def as_row(self) -> tuple[int, int, int, int, int]:
        return (self.encounters, self.emergency_admissions, self.days, self.max_inpatient, self.transfers_to_facility)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatientHistory:
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})


HISTORY_WIDTH = len(PatientHistory.__dataclass_fields__)


def history_in_file(patients: list[Any], encounter_ids: list[int], cols: Columns) -> np.ndarray:
    """History features for a batch: each row sees only the same patient's encounters with a smaller
    encounter_id in this batch (the same accumulator the online history store uses)."""
    n = len(patients)
    if n >= _MANY_ROWS:
        ids = np.asarray(patients), np.asarray(encounter_ids)
        if all(a.dtype.kind in "iu" and a.shape == (n,) for a in ids):
            return _history_sorted(ids[0], ids[1], cols)
    out = np.zeros((n, HISTORY_WIDTH), dtype=np.float32)
    adm = cols["admission_type_id"].astype(int).tolist()
    los = cols["time_in_hospital"].astype(int).tolist()
    inp = cols["number_inpatient"].astype(int).tolist()
    dis = cols["discharge_disposition_id"].astype(int).tolist()
    seen: dict[Any, PatientHistory] = {}
    for i in sorted(range(n), key=encounter_ids.__getitem__):
        h = seen.get(patients[i])
        if h is None:
            h = seen[patients[i]] = PatientHistory()
        elif h.encounters:
            out[i] = h.as_row()
        h.add(adm[i], los[i], inp[i], dis[i])
    return out


_MANY_ROWS = 1024  # from here on the numpy form below beats the per-row accumulator


def _history_sorted(patients: np.ndarray, encounter_ids: np.ndarray, cols: Columns) -> np.ndarray:
    """``history_in_file``'s answer in numpy, for large batches: the same sums and maxima of earlier encounters.

    Rows are ordered by patient, then encounter_id (ties: input order, as the stable sort above); each row gets
    its patient's running totals *before* it (exclusive cumulative sums, and a running max of the previous
    rows' ``number_inpatient``, reset at every patient)."""
    n = len(patients)
    order = np.lexsort((encounter_ids, patients))  # stable: equal keys keep input order
    start = np.ones(n, dtype=bool)
    start[1:] = patients[order][1:] != patients[order][:-1]
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)

    def earlier_sum(values: np.ndarray) -> np.ndarray:
        before = np.cumsum(values[order]) - values[order]
        return before - before[first][group]

    adm = cols["admission_type_id"].astype(np.int64)
    inpatient = cols["number_inpatient"].astype(np.int64)[order]
    previous = np.zeros(n, dtype=np.int64)
    previous[1:] = inpatient[:-1]
    previous[start] = 0
    span = int(previous.max(initial=0)) + 1  # offsets keep the running max from crossing patients
    max_before = np.maximum.accumulate(group * span + previous) - group * span
    sorted_out = np.column_stack(
        (
            np.cumsum(np.ones(n, dtype=np.int64)) - 1 - first[group],
            earlier_sum(((adm == 1) | (adm == 7)).astype(np.int64)),
            earlier_sum(cols["time_in_hospital"].astype(np.int64)),
            max_before,
            earlier_sum(np.isin(cols["discharge_disposition_id"].astype(np.int64), list(FACILITY_DISCHARGES))),
        )
    )
    out = np.empty((n, HISTORY_WIDTH), dtype=np.float32)
    out[order] = sorted_out
    return out
