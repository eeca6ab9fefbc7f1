"""Published numbers of the LMD paper, transcribed from its tables (the only hard-coded numbers).

Source: Pan et al., "Long-tailed Medical Diagnosis with Relation-aware Representation Learning
and Iterative Classifier Calibration" (LMD), Tables 1-5.
Every value is in % as printed. Each entry names the table it comes from; ``dataset`` is the key
an experiment declares as ``report.paper`` to get the side-by-side columns.

* Table 1 — Hyper-Kvasir: AUC, F1, Kappa (quadratic-weighted), Precision, Recall (no std printed).
* Table 2 — ISIC-Archive-LT: BACC of head / medium / tail / all classes, mean ± std.
* Table 3 — ISIC-2019-LT at r = 100 / 300 / 500: AUC and BACC (no std printed).
* Table 4 — lambda_e sweep on Hyper-Kvasir: AUC, BACC, F1, Kappa, Precision.
* Table 5 — E-step / M-step sampling on ISIC-Archive-LT (uniform or class-balanced):
  head / medium / tail / overall BACC, mean ± std.

LMD's own rows, as a check of the transcription: Hyper-Kvasir AUC 98.96, F1 62.99, Kappa 92.43,
Precision 62.35, Recall 67.27; ISIC-Archive-LT BACC head 63.79, medium 61.05, tail 60.59,
overall 61.63; ISIC-2019-LT BACC 70.75 / 59.39 / 56.88 and AUC 95.11 / 94.01 / 93.69 at
r = 100 / 300 / 500 (``tests/test_report.py`` compares them with the tables below).
"""
from __future__ import annotations

# Row names shared by Tables 1-3 (the paper's method names).
METHODS = ["CE", "RS", "Focal", "LDAM-RS", "CB-Focal", "Decoupling", "Seesaw", "CICL",
           "Bal-Mixup", "CB+WD+Max", "FCD", "FS", "CC-SAM", "GCL", "LMD w/o RRL",
           "LMD w/o ICC", "LMD w/o VFC", "LMD w/o FDC", "LMD"]

# Table 1: Hyper-Kvasir. Columns: auc, f1, kappa_quadratic, precision, recall.
_T1_COLS = ["auc", "f1", "kappa_quadratic", "precision", "recall"]
_T1 = {
    "CE": [95.61, 46.62, 78.54, 47.78, 47.53],
    "RS": [95.53, 60.11, 85.70, 59.69, 60.81],
    "Focal": [98.46, 58.91, 85.99, 60.33, 58.35],
    "LDAM-RS": [94.77, 49.96, 81.08, 50.08, 50.57],
    "CB-Focal": [95.37, 58.27, 85.25, 58.24, 58.48],
    "Decoupling": [94.68, 60.53, 86.07, 60.92, 60.36],
    "Seesaw": [98.09, 59.49, 84.99, 60.59, 59.13],
    "CICL": [97.41, 57.59, 91.69, 58.99, 57.47],
    "Bal-Mixup": [96.83, 58.59, 91.13, 60.37, 58.10],
    "CB+WD+Max": [97.41, 59.62, 91.42, 60.32, 59.59],
    "FCD": [96.12, 57.28, 85.13, 57.45, 61.91],
    "FS": [95.80, 57.34, 86.41, 58.09, 58.39],
    "CC-SAM": [98.84, 61.72, 87.19, 61.60, 63.40],
    "GCL": [98.62, 60.59, 86.26, 61.34, 62.85],
    "LMD w/o RRL": [95.99, 59.63, 89.93, 58.55, 61.19],
    "LMD w/o ICC": [98.53, 60.94, 88.95, 59.88, 63.62],
    "LMD w/o VFC": [98.92, 57.52, 91.03, 59.48, 57.33],
    "LMD w/o FDC": [98.68, 61.51, 87.98, 60.42, 63.89],
    "LMD": [98.96, 62.99, 92.43, 62.35, 67.27],
}

# Table 2: ISIC-Archive-LT. Columns: head, medium, tail, overall BACC, each (mean, std).
_T2_COLS = ["head_bacc", "medium_bacc", "tail_bacc", "bacc"]
_T2 = {
    "CE": [(71.26, 0.19), (50.39, 0.12), (26.72, 0.33), (46.21, 0.30)],
    "RS": [(71.75, 0.20), (49.30, 0.15), (33.63, 0.31), (49.00, 0.28)],
    "Focal": [(70.96, 0.22), (41.59, 0.09), (29.43, 0.36), (44.77, 0.31)],
    "LDAM-RS": [(71.34, 0.23), (40.88, 0.17), (30.21, 0.30), (43.90, 0.29)],
    "CB-Focal": [(52.03, 0.18), (54.95, 0.15), (36.66, 0.35), (46.27, 0.26)],
    "Decoupling": [(72.15, 0.19), (48.39, 0.13), (31.18, 0.33), (47.90, 0.29)],
    "Seesaw": [(71.60, 0.20), (49.37, 0.08), (42.97, 0.35), (52.98, 0.27)],
    "CICL": [(76.33, 0.16), (51.94, 0.15), (35.01, 0.30), (51.65, 0.28)],
    "Bal-Mixup": [(69.91, 0.24), (38.99, 0.24), (27.80, 0.29), (43.03, 0.31)],
    "CB+WD+Max": [(64.73, 0.16), (29.74, 0.25), (24.87, 0.39), (37.65, 0.34)],
    "FCD": [(70.59, 0.21), (51.76, 0.18), (41.33, 0.31), (52.87, 0.26)],
    "FS": [(68.14, 0.19), (54.62, 0.21), (44.81, 0.26), (51.89, 0.24)],
    "CC-SAM": [(67.72, 0.13), (55.03, 0.16), (52.60, 0.24), (57.61, 0.19)],
    "GCL": [(70.24, 0.20), (43.45, 0.14), (42.38, 0.33), (51.06, 0.22)],
    "LMD w/o RRL": [(68.45, 0.19), (51.34, 0.20), (42.23, 0.33), (53.93, 0.29)],
    "LMD w/o ICC": [(65.47, 0.18), (53.26, 0.15), (44.59, 0.24), (54.38, 0.23)],
    "LMD w/o VFC": [(72.32, 0.21), (49.24, 0.13), (38.45, 0.36), (53.56, 0.32)],
    "LMD w/o FDC": [(65.89, 0.23), (53.45, 0.37), (41.27, 0.22), (53.47, 0.26)],
    "LMD": [(63.79, 0.14), (61.05, 0.12), (60.59, 0.31), (61.63, 0.21)],
}

# Table 3: ISIC-2019-LT. Per row: {r: (AUC, BACC)}.
_T3 = {
    "CE": {100: (89.35, 51.22), 300: (87.54, 47.16), 500: (83.89, 39.05)},
    "RS": {100: (94.93, 59.65), 300: (91.46, 55.59), 500: (86.08, 42.63)},
    "Focal": {100: (94.98, 57.47), 300: (92.55, 48.49), 500: (92.11, 46.98)},
    "LDAM-RS": {100: (93.40, 56.09), 300: (90.26, 48.37), 500: (88.96, 48.14)},
    "CB-Focal": {100: (92.28, 61.51), 300: (88.61, 52.85), 500: (86.47, 48.89)},
    "Decoupling": {100: (94.97, 60.56), 300: (92.79, 53.89), 500: (90.91, 52.44)},
    "Seesaw": {100: (94.85, 62.37), 300: (91.93, 55.09), 500: (90.09, 52.26)},
    "CICL": {100: (94.50, 58.43), 300: (92.15, 54.27), 500: (89.53, 51.73)},
    "Bal-Mixup": {100: (93.84, 51.91), 300: (93.40, 49.66), 500: (90.61, 40.77)},
    "CB+WD+Max": {100: (93.40, 58.04), 300: (91.35, 50.07), 500: (85.83, 48.47)},
    "FCD": {100: (93.52, 63.49), 300: (92.07, 56.23), 500: (89.64, 50.36)},
    "FS": {100: (92.21, 62.03), 300: (90.89, 53.95), 500: (88.62, 48.29)},
    "CC-SAM": {100: (94.30, 65.36), 300: (91.71, 55.26), 500: (89.45, 52.66)},
    "GCL": {100: (93.76, 62.83), 300: (92.22, 54.48), 500: (90.64, 50.58)},
    "LMD w/o RRL": {100: (93.17, 56.73), 300: (92.20, 53.93), 500: (90.64, 49.78)},
    "LMD w/o ICC": {100: (94.35, 61.24), 300: (93.58, 52.06), 500: (91.29, 46.41)},
    "LMD w/o VFC": {100: (94.62, 54.46), 300: (93.75, 50.24), 500: (92.06, 44.82)},
    "LMD w/o FDC": {100: (94.56, 55.07), 300: (93.70, 51.92), 500: (91.73, 46.23)},
    "LMD": {100: (95.11, 70.75), 300: (94.01, 59.39), 500: (93.69, 56.88)},
}

# Table 4: lambda_e sweep on Hyper-Kvasir. Columns: auc, bacc, f1, kappa_quadratic, precision.
_T4_COLS = ["auc", "bacc", "f1", "kappa_quadratic", "precision"]
_T4 = {
    1e-2: [97.88, 55.90, 50.99, 86.27, 54.47],
    1e-3: [98.33, 60.60, 57.47, 86.32, 56.82],
    1e-4: [98.96, 67.27, 62.99, 92.43, 62.35],
    1e-5: [98.42, 62.82, 60.60, 88.87, 59.89],
    1e-6: [98.68, 60.39, 58.29, 87.57, 57.84],
}

# Table 5: sampling in the E- and M-step on ISIC-Archive-LT; keys (E-step, M-step) with
# "instance" = uniform (triangle in the paper) and "class_balanced" (circle).
# Columns: head, medium, tail, overall BACC, each (mean, std).
_T5 = {
    ("instance", "instance"): [(63.94, 0.13), (61.00, 0.10), (56.79, 0.34), (60.04, 0.22)],
    ("class_balanced", "instance"): [(63.22, 0.12), (59.89, 0.09), (54.77, 0.32), (58.65, 0.22)],
    ("class_balanced", "class_balanced"): [(63.54, 0.11), (60.39, 0.11), (54.01, 0.30), (58.55, 0.20)],
    ("instance", "class_balanced"): [(63.79, 0.14), (61.05, 0.12), (60.59, 0.31), (61.63, 0.21)],
}

# Which dataset (report.paper) each table was published on: lmdlt/report/registry.py (TABLES).


def _pct(v):
    return None if v is None else v / 100.0


def paper_value(table: str, key, metric: str, imbalance_ratio: float | None = None):
    """(mean, std) as fractions (std None where the paper prints none), or None when the paper
    has no such cell. ``key``: the method name (Tables 1-3), lambda_e (Table 4), or
    (e_sampler, m_sampler) (Table 5); Table 3 also needs ``imbalance_ratio`` (100, 300, 500)."""
    if table == "table1":
        row = _T1.get(key)
        return None if row is None or metric not in _T1_COLS else (_pct(row[_T1_COLS.index(metric)]), None)
    if table == "table2":
        row = _T2.get(key)
        if row is None or metric not in _T2_COLS:
            return None
        m, s = row[_T2_COLS.index(metric)]
        return _pct(m), _pct(s)
    if table == "table3":
        cell = _T3.get(key, {}).get(int(round(imbalance_ratio))) if imbalance_ratio else None
        if cell is None or metric not in ("auc", "bacc"):
            return None
        return _pct(cell[0 if metric == "auc" else 1]), None
    if table == "table4":
        match = [v for lam, v in _T4.items() if key is not None and abs(float(key) - lam) <= 1e-9 * lam]
        if not match or metric not in _T4_COLS:
            return None
        return _pct(match[0][_T4_COLS.index(metric)]), None
    if table == "table5":
        row = _T5.get(tuple(key) if key is not None else None)
        if row is None or metric not in _T2_COLS:
            return None
        m, s = row[_T2_COLS.index(metric)]
        return _pct(m), _pct(s)
    raise ValueError(f"unknown paper table {table!r} (table1 ... table5)")
