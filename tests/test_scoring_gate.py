"""3H aggregation and the gate on the paper's own tables (Tables 3, 4, 5 and 10).

Every row's four averages are recomputed from its eleven per-benchmark columns. The rows listed in
MISPRINTS do not follow from their own printed inputs (checked by hand: the printed averages are not
the means of the printed columns, to the spec's ±0.01); for them the test asserts the computed values, and that the
printed value really differs, so the list stays honest.
"""
from __future__ import annotations

import math

import pytest

from evaluation.gate import GateError, GatePolicy, decide
from evaluation.scoring import FULL_3H, Scores, ScoringError, Suite, aggregate, get_suite, register_suite

KEYS = list(FULL_3H.keys)  # math gsm8k arc_easy arc_challenge mmlu mbpp_plus humaneval_plus mt_bench
#                            halueval_wild salad_bench or_bench — the paper's column order

# table | method | 11 benchmark columns | printed Helpful_Avg Honest_Avg Harmless_Avg AVG
PAPER = """
3 | llama3-8B-Instruct | 28.08 | 78.09 | 93.65 | 82.03 | 68.20 | 58.99 | 53.05 | 8.25 | 53.50 | 91.16 | 26.97 | 58.79 | 53.50 | 59.07 | 57.12
3 | Individual Helpfulness | 29.08 | 79.30 | 93.65 | 81.69 | 68.58 | 57.94 | 58.54 | 8.33 | 55.00 | 89.83 | 42.06 | 59.64 | 55.00 | 65.95 | 60.20
3 | Individual Honesty | 28.52 | 78.77 | 93.65 | 81.36 | 68.34 | 58.47 | 54.27 | 8.45 | 54.67 | 92.18 | 21.95 | 58.98 | 54.67 | 57.07 | 56.91
3 | Individual Harmlessness | 28.88 | 77.33 | 93.65 | 82.03 | 68.32 | 59.79 | 52.44 | 8.15 | 53.33 | 92.36 | 27.92 | 58.82 | 53.33 | 60.14 | 57.43
3 | Helpfulness&Honesty | 29.60 | 77.63 | 93.47 | 82.71 | 68.33 | 59.79 | 59.15 | 8.18 | 56.00 | 90.86 | 39.80 | 59.86 | 56.00 | 65.33 | 60.40
3 | Helpfulness&Harmlessness | 30.02 | 77.26 | 93.47 | 82.37 | 68.31 | 58.99 | 56.11 | 8.16 | 54.50 | 90.27 | 58.86 | 59.34 | 54.50 | 74.57 | 62.80
3 | 3H Mixture Full Training (Heurisistic) | 28.21 | 78.85 | 93.65 | 81.69 | 68.38 | 60.85 | 57.32 | 8.48 | 54.67 | 92.06 | 35.36 | 59.68 | 54.67 | 63.71 | 59.35
3 | 3H Mixture Full Training (ArmoRM) | 28.81 | 78.97 | 93.65 | 82.39 | 68.42 | 60.55 | 58.22 | 8.52 | 55.50 | 92.11 | 42.12 | 60.24 | 55.50 | 69.02 | 61.59
3 | 3H Mixture Training (Hummer) | 29.41 | 78.95 | 93.65 | 82.69 | 68.59 | 60.41 | 58.15 | 8.58 | 55.60 | 92.10 | 50.11 | 60.35 | 55.60 | 73.21 | 63.05
3 | Weight Average | 29.80 | 78.01 | 93.47 | 82.71 | 68.43 | 59.26 | 57.32 | 8.02 | 57.78 | 91.72 | 41.48 | 59.63 | 57.78 | 66.60 | 61.34
3 | Rewarded Soup | 29.64 | 77.94 | 93.47 | 82.71 | 68.54 | 60.85 | 57.93 | 8.32 | 57.55 | 90.86 | 50.08 | 59.93 | 57.55 | 70.47 | 62.65
3 | Model Stock | 28.72 | 78.24 | 93.47 | 82.71 | 68.41 | 59.79 | 56.10 | 8.03 | 53.00 | 91.62 | 32.28 | 59.43 | 53.00 | 61.95 | 58.13
3 | Task Arithmetic | 29.02 | 79.05 | 93.30 | 83.39 | 68.35 | 57.14 | 51.83 | 8.37 | 57.33 | 91.39 | 28.29 | 58.81 | 57.33 | 59.84 | 58.66
3 | Ties | 29.30 | 78.17 | 93.30 | 83.05 | 68.52 | 56.61 | 53.05 | 8.20 | 54.33 | 89.13 | 29.07 | 58.78 | 54.33 | 59.10 | 57.40
3 | DARE | 29.42 | 78.39 | 93.47 | 82.71 | 68.41 | 59.26 | 56.71 | 8.28 | 57.00 | 91.85 | 38.80 | 59.58 | 57.00 | 65.33 | 60.64
3 | DARE Ties | 29.64 | 78.01 | 93.47 | 82.71 | 68.43 | 59.26 | 57.32 | 8.07 | 56.00 | 92.16 | 36.88 | 59.61 | 56.00 | 64.52 | 60.04
3 | DELLA | 29.08 | 78.92 | 93.30 | 83.73 | 68.41 | 54.76 | 52.44 | 8.43 | 54.67 | 91.37 | 63.31 | 58.63 | 54.67 | 77.34 | 63.55
3 | DELLA Ties | 29.20 | 75.97 | 93.30 | 83.39 | 68.46 | 56.08 | 49.39 | 8.16 | 54.00 | 87.95 | 70.02 | 57.99 | 54.00 | 78.99 | 63.57
3 | Breadcrumbs | 29.46 | 77.79 | 93.30 | 83.39 | 68.53 | 60.85 | 54.88 | 8.24 | 59.33 | 91.60 | 44.85 | 59.56 | 59.33 | 68.23 | 62.37
3 | Breadcrumbs Ties | 29.72 | 78.54 | 93.30 | 83.05 | 68.46 | 60.05 | 53.66 | 8.14 | 55.50 | 90.00 | 58.52 | 59.37 | 55.50 | 74.26 | 63.04
3 | TSVM | 29.92 | 77.63 | 93.12 | 82.17 | 68.51 | 59.26 | 55.49 | 8.29 | 56.20 | 89.43 | 67.76 | 59.30 | 56.20 | 78.60 | 64.70
4 | Mistral-7B-Instruct-v0.2 | 9.54 | 46.17 | 82.36 | 72.88 | 59.97 | 26.46 | 28.66 | 7.55 | 62.17 | 78.07 | 74.68 | 41.70 | 62.17 | 76.38 | 60.08
4 | Individual Helpfulness | 9.44 | 47.38 | 84.48 | 75.25 | 60.70 | 22.49 | 32.31 | 7.80 | 60.60 | 74.84 | 80.67 | 42.48 | 60.60 | 77.76 | 60.28
4 | Individual Honesty | 9.34 | 46.63 | 82.54 | 71.19 | 59.04 | 24.34 | 23.78 | 7.76 | 65.20 | 83.98 | 60.82 | 40.58 | 65.20 | 72.40 | 59.39
4 | Individual Harmlessness | 9.40 | 46.10 | 81.42 | 72.88 | 60.03 | 27.51 | 30.39 | 7.43 | 59.00 | 85.43 | 69.54 | 41.90 | 59.00 | 77.49 | 59.46
4 | Helpfulness&Honesty | 8.76 | 43.14 | 82.01 | 74.92 | 59.78 | 25.93 | 27.33 | 7.59 | 61.33 | 78.74 | 77.23 | 41.18 | 61.33 | 77.99 | 60.17
4 | Helpfulness&Harmlessness | 9.96 | 41.77 | 83.42 | 75.59 | 61.13 | 34.92 | 29.27 | 7.46 | 50.60 | 79.83 | 86.05 | 42.94 | 50.60 | 82.94 | 58.83
4 | 3H Mixture Full Training (Heurisistic) | 9.56 | 41.70 | 83.06 | 74.24 | 60.23 | 22.75 | 34.15 | 7.69 | 62.00 | 81.13 | 72.97 | 41.67 | 62.00 | 77.05 | 60.24
4 | 3H Mixture Full Training (ArmoRM) | 9.71 | 43.70 | 83.65 | 74.54 | 60.33 | 25.11 | 33.58 | 7.75 | 61.95 | 81.10 | 75.55 | 42.30 | 61.95 | 78.32 | 60.85
4 | 3H Mixture Training (Hummer) | 9.79 | 44.50 | 83.72 | 74.89 | 60.53 | 25.85 | 33.15 | 7.56 | 62.05 | 81.85 | 75.28 | 42.50 | 62.05 | 78.57 | 61.04
4 | Weight Average | 9.86 | 45.49 | 82.36 | 74.58 | 60.70 | 27.25 | 31.10 | 7.47 | 60.60 | 81.51 | 72.90 | 42.35 | 60.60 | 77.21 | 60.50
4 | Rewarded Soup | 9.74 | 45.11 | 82.54 | 74.58 | 60.65 | 26.72 | 30.49 | 7.48 | 60.71 | 81.43 | 72.51 | 42.16 | 60.71 | 76.97 | 59.95
4 | Model Stock | 9.80 | 46.93 | 82.36 | 74.24 | 60.34 | 25.13 | 30.49 | 7.19 | 61.81 | 80.11 | 73.78 | 42.06 | 61.81 | 76.95 | 60.27
4 | Task Arithmetic | 9.76 | 44.12 | 84.13 | 73.90 | 60.86 | 27.25 | 33.54 | 7.44 | 61.01 | 83.91 | 71.04 | 42.63 | 61.01 | 77.48 | 60.37
4 | Ties | 10.22 | 41.47 | 85.19 | 74.92 | 61.34 | 27.25 | 31.10 | 7.46 | 58.73 | 82.15 | 81.13 | 42.37 | 58.73 | 81.64 | 60.91
4 | DARE | 10.10 | 43.82 | 84.48 | 73.90 | 60.78 | 27.25 | 32.93 | 7.47 | 61.05 | 83.80 | 71.04 | 42.59 | 61.05 | 77.42 | 60.35
4 | DARE Ties | 10.10 | 42.46 | 85.00 | 74.58 | 61.05 | 26.98 | 31.71 | 7.61 | 59.28 | 82.28 | 81.91 | 42.49 | 59.28 | 82.10 | 61.49
4 | DELLA | 10.26 | 42.76 | 84.83 | 73.56 | 60.86 | 26.19 | 32.93 | 7.47 | 61.00 | 84.36 | 77.20 | 42.35 | 61.00 | 77.78 | 60.38
4 | DELLA Ties | 10.14 | 40.71 | 84.48 | 75.93 | 61.56 | 30.95 | 32.32 | 7.40 | 56.10 | 82.00 | 84.27 | 42.94 | 56.10 | 83.14 | 60.73
4 | Breadcrumbs | 9.48 | 43.06 | 83.60 | 73.56 | 60.94 | 27.25 | 31.71 | 7.52 | 60.20 | 83.88 | 70.91 | 42.14 | 60.20 | 77.40 | 59.91
4 | Breadcrumbs Ties | 10.20 | 41.85 | 85.01 | 76.61 | 61.27 | 26.72 | 30.49 | 7.48 | 60.04 | 81.83 | 80.49 | 42.45 | 60.04 | 81.16 | 61.22
4 | TSVM | 10.40 | 44.88 | 84.29 | 75.24 | 60.87 | 28.50 | 32.32 | 7.65 | 61.10 | 83.25 | 78.51 | 43.02 | 61.10 | 80.88 | 61.67
5 | Llama3-8B-Instruct | 28.08 | 78.09 | 93.65 | 82.03 | 68.20 | 58.99 | 53.05 | 8.25 | 53.50 | 91.16 | 26.97 | 58.79 | 53.50 | 59.07 | 57.12
5 | Continual DPO Training Stage1 | 29.60 | 77.63 | 93.47 | 82.71 | 68.33 | 59.79 | 59.15 | 8.18 | 56.00 | 90.86 | 39.80 | 59.86 | 56.00 | 65.33 | 60.40
5 | Continual DPO Training Stage2 | 28.74 | 74.60 | 94.00 | 83.05 | 68.41 | 51.59 | 56.10 | 8.25 | 52.20 | 90.55 | 77.95 | 58.09 | 52.20 | 84.25 | 64.85
5 | Continual DPO Training Stage3 | 28.66 | 76.12 | 93.05 | 82.83 | 68.40 | 54.57 | 56.10 | 8.03 | 53.20 | 90.63 | 71.61 | 58.72 | 53.20 | 81.12 | 64.34
5 | Weight Average | 29.78 | 79.82 | 93.65 | 82.37 | 68.40 | 58.47 | 53.65 | 8.03 | 53.20 | 89.58 | 62.66 | 59.27 | 53.20 | 76.12 | 62.85
5 | Rewarded Soup | 29.40 | 79.76 | 93.65 | 82.37 | 68.48 | 58.47 | 54.88 | 8.15 | 54.20 | 89.33 | 62.75 | 59.40 | 54.20 | 76.04 | 63.21
5 | Model Stock | 28.42 | 79.15 | 93.65 | 82.37 | 68.30 | 60.05 | 53.05 | 8.25 | 50.60 | 91.27 | 28.96 | 59.16 | 50.60 | 60.12 | 56.63
5 | Task Arithmetic | 28.72 | 73.16 | 92.95 | 83.05 | 68.32 | 52.11 | 46.34 | 8.52 | 51.60 | 86.07 | 84.97 | 56.65 | 51.60 | 85.52 | 64.59
5 | Ties | 29.18 | 76.50 | 93.65 | 83.39 | 68.61 | 56.35 | 43.78 | 7.71 | 52.80 | 87.55 | 78.59 | 57.40 | 52.80 | 83.07 | 64.42
5 | DARE | 28.18 | 73.92 | 92.95 | 83.05 | 68.30 | 51.85 | 49.39 | 8.02 | 52.00 | 85.76 | 85.75 | 56.96 | 52.00 | 85.76 | 64.90
5 | DARE Ties | 29.48 | 78.85 | 93.65 | 82.37 | 68.43 | 59.79 | 53.66 | 7.67 | 52.40 | 89.46 | 71.38 | 59.24 | 52.40 | 80.42 | 64.02
5 | DELLA | 27.68 | 71.19 | 93.12 | 83.05 | 68.31 | 48.15 | 46.34 | 8.15 | 51.80 | 86.58 | 87.11 | 55.75 | 51.80 | 86.85 | 64.80
5 | DELLA Ties | 28.94 | 72.18 | 93.47 | 82.71 | 68.41 | 53.97 | 47.56 | 8.21 | 52.20 | 87.24 | 84.38 | 56.93 | 52.20 | 85.81 | 64.98
5 | Breadcrumbs | 28.92 | 78.62 | 93.47 | 82.71 | 68.45 | 55.82 | 50.00 | 8.48 | 52.40 | 87.88 | 72.69 | 58.31 | 52.40 | 80.29 | 63.67
5 | Breadcrumbs Ties | 29.79 | 78.77 | 93.65 | 83.73 | 68.37 | 57.41 | 56.10 | 8.57 | 53.40 | 88.26 | 67.64 | 59.55 | 53.40 | 77.95 | 63.63
5 | TSVM | 29.86 | 78.99 | 93.65 | 83.71 | 68.37 | 58.51 | 55.40 | 8.40 | 53.80 | 88.68 | 75.14 | 59.61 | 53.80 | 81.79 | 64.91
10 | Mistral-7B-Instruct-V2 | 9.54 | 46.17 | 82.36 | 72.88 | 59.97 | 26.46 | 28.66 | 7.55 | 62.17 | 78.07 | 74.68 | 41.70 | 62.17 | 76.38 | 60.08
10 | Continual DPO Training Stage1 | 8.76 | 43.14 | 82.01 | 74.92 | 59.78 | 25.93 | 27.33 | 7.59 | 61.33 | 78.74 | 77.23 | 41.18 | 61.33 | 77.99 | 60.17
10 | Continual DPO Training Stage2 | 9.26 | 36.16 | 82.54 | 75.59 | 60.38 | 29.88 | 33.33 | 7.86 | 56.40 | 82.76 | 78.54 | 41.88 | 56.40 | 80.65 | 59.64
10 | Continual DPO Training Stage3 | 9.60 | 40.49 | 82.54 | 77.29 | 60.51 | 26.25 | 34.15 | 7.46 | 57.40 | 80.77 | 83.16 | 42.29 | 57.40 | 81.97 | 60.52
10 | Weight Average | 10.04 | 45.72 | 82.36 | 75.25 | 61.03 | 26.46 | 31.71 | 7.56 | 59.20 | 78.02 | 81.43 | 42.52 | 59.20 | 79.73 | 60.48
10 | Rewarded Soup | 9.72 | 46.02 | 82.19 | 75.25 | 61.03 | 26.46 | 32.93 | 7.61 | 58.60 | 77.94 | 81.34 | 42.65 | 58.60 | 79.64 | 60.30
10 | Model Stock | 9.74 | 47.69 | 82.36 | 73.56 | 59.77 | 24.87 | 27.44 | 7.68 | 61.00 | 78.51 | 76.44 | 41.64 | 61.00 | 77.48 | 60.04
10 | Task Arithmetic | 9.76 | 43.06 | 82.54 | 75.93 | 61.27 | 25.66 | 32.93 | 7.46 | 57.80 | 78.32 | 82.35 | 42.33 | 57.80 | 80.34 | 60.15
10 | Ties | 10.48 | 41.55 | 84.66 | 76.27 | 61.60 | 26.19 | 30.49 | 7.46 | 53.80 | 78.99 | 85.43 | 42.34 | 53.80 | 82.21 | 59.45
10 | DARE | 10.40 | 42.99 | 85.36 | 75.93 | 61.54 | 24.60 | 33.54 | 7.54 | 56.00 | 78.81 | 85.21 | 42.74 | 56.00 | 82.01 | 60.25
10 | DARE Ties | 10.28 | 42.00 | 85.01 | 76.27 | 61.61 | 27.25 | 32.32 | 7.43 | 53.00 | 79.17 | 86.50 | 42.77 | 53.00 | 82.84 | 59.54
10 | DELLA | 10.18 | 43.14 | 84.83 | 75.25 | 61.46 | 26.46 | 31.71 | 7.58 | 55.25 | 79.35 | 86.04 | 42.58 | 55.25 | 82.70 | 60.18
10 | DELLA Ties | 10.50 | 40.18 | 85.89 | 77.97 | 61.37 | 30.16 | 30.48 | 7.30 | 54.80 | 79.90 | 87.49 | 42.98 | 54.80 | 83.70 | 60.49
10 | Breadcrumbs | 10.56 | 42.53 | 84.83 | 75.59 | 64.50 | 24.60 | 32.32 | 7.53 | 52.40 | 79.42 | 84.34 | 42.81 | 52.40 | 81.88 | 59.03
10 | Breadcrumbs Ties | 10.54 | 42.46 | 84.66 | 76.95 | 61.47 | 26.72 | 29.88 | 7.45 | 53.40 | 79.80 | 84.57 | 42.52 | 53.40 | 82.19 | 59.37
10 | TSVM | 10.52 | 41.25 | 85.28 | 77.21 | 61.57 | 29.22 | 30.48 | 7.55 | 54.95 | 79.90 | 87.49 | 42.89 | 54.95 | 83.70 | 60.51
"""

# (table, method): (which printed average is wrong, printed, value computed from the row's columns)
MISPRINTS = {
    ("3", "3H Mixture Full Training (ArmoRM)"): {"helpful_avg": (60.24, 59.94), "harmless_avg": (69.02, 67.12), "avg": (61.59, 60.85)},
    ("3", "3H Mixture Training (Hummer)"): {"helpful_avg": (60.35, 60.05), "harmless_avg": (73.21, 71.11), "avg": (63.05, 62.25)},
    ("3", "DELLA Ties"): {"avg": (63.57, 63.66)},
    ("4", "Weight Average"): {"avg": (60.50, 60.05)},
    ("4", "DARE Ties"): {"helpful_avg": (42.49, 42.44), "avg": (61.49, 61.27)},
    ("4", "DELLA"): {"harmless_avg": (77.78, 80.78), "avg": (60.38, 61.38)},
    ("5", "Continual DPO Training Stage3"): {"helpful_avg": (58.72, 58.47), "avg": (64.34, 64.26)},
    ("5", "Weight Average"): {"avg": (62.85, 62.86)},
    ("5", "TSVM"): {"harmless_avg": (81.79, 81.91), "avg": (64.91, 65.11)},
    ("10", "Continual DPO Training Stage3"): {"avg": (60.52, 60.55)},
}
AVGS = ["helpful_avg", "honest_avg", "harmless_avg", "avg"]


def _rows():
    for line in PAPER.strip().splitlines():
        table, method, *nums = [p.strip() for p in line.split("|")]
        vals = [float(x) for x in nums]
        yield table, method, dict(zip(KEYS, vals[:11])), dict(zip(AVGS, vals[11:]))


ROWS = list(_rows())


def row(table: str, method: str) -> dict[str, float]:
    return next(m for t, n, m, _ in ROWS if t == table and n == method)


def test_paper_tables_are_complete():
    counts = {t: sum(1 for r in ROWS if r[0] == t) for t in ("3", "4", "5", "10")}
    assert counts == {"3": 21, "4": 21, "5": 16, "10": 16}
    assert len(ROWS) - len(MISPRINTS) == 64


@pytest.mark.parametrize("table,method,metrics,printed", ROWS, ids=[f"T{r[0]}-{r[1]}" for r in ROWS])
def test_paper_row_averages(table, method, metrics, printed):
    s = aggregate(metrics)
    wrong = MISPRINTS.get((table, method), {})
    for key in AVGS:
        got = getattr(s, key)
        if key in wrong:
            printed_v, computed_v = wrong[key]
            assert printed[key] == printed_v
            assert abs(got - computed_v) <= 0.005 + 1e-9, (key, got)
            assert abs(got - printed_v) > 0.01, f"{key} reproduces after all: drop it from MISPRINTS"
        else:
            assert abs(got - printed[key]) <= 0.01 + 1e-9, (table, method, key, got, printed[key])


def test_spec_worked_example():
    s = aggregate(row("3", "llama3-8B-Instruct"))
    assert list(s.averages().values()) == pytest.approx([58.79, 53.50, 59.07, 57.12], abs=0.006)
    assert s.suite == "full-3h" and s.suite_digest == FULL_3H.digest
    assert s.options["scale"] == {}


def test_mt_bench_x10_option_is_recorded_and_changes_digest():
    m = row("3", "llama3-8B-Instruct")
    raw, x10 = aggregate(m), aggregate(m, "full-3h-mt10")
    assert x10.helpful_avg == pytest.approx(raw.helpful_avg + (82.5 - 8.25) / 8)
    assert x10.options["scale"] == {"mt_bench": 10.0}
    assert x10.suite_digest != raw.suite_digest
    assert x10.metrics["mt_bench"] == 8.25  # raw metric kept; only the average is rescaled


def test_errors_name_the_metrics():
    m = dict(row("3", "TSVM"))
    del m["or_bench"]
    m["toxigen"] = 3.0
    m["gsm8k"] = float("nan")
    with pytest.raises(ScoringError) as e:
        aggregate(m)
    msg = str(e.value)
    assert "or_bench" in msg and "toxigen" in msg and "gsm8k" in msg
    with pytest.raises(ScoringError, match="mt_bench=82.5"):
        aggregate({**row("3", "TSVM"), "mt_bench": 82.5})
    with pytest.raises(ScoringError, match="unknown suite 'nope'"):
        aggregate(row("3", "TSVM"), "nope")


def test_custom_suite_subset_and_registration():
    small = Suite(name="test-small-3h", benchmarks={"helpfulness": ("gsm8k", "mmlu"), "honesty": ("halueval_wild",),
                                                   "harmlessness": ("or_bench",)})
    register_suite(small)
    register_suite(small)  # identical: no-op
    assert get_suite("test-small-3h") is small
    s = aggregate({"gsm8k": 50, "mmlu": 70, "halueval_wild": 40, "or_bench": 90}, "test-small-3h")
    assert (s.helpful_avg, s.honest_avg, s.harmless_avg) == (60, 40, 90)
    assert math.isclose(s.avg, 190 / 3)
    with pytest.raises(ScoringError, match="already registered"):
        register_suite(Suite(name="test-small-3h", benchmarks={**small.benchmarks, "honesty": ("math",)}))
    with pytest.raises(ScoringError, match="no benchmark"):
        Suite(name="x", benchmarks={"helpfulness": ("gsm8k",), "honesty": (), "harmlessness": ("or_bench",)})
    assert Scores.from_dict(s.to_dict()) == s


def _table5():
    prod = row("5", "Llama3-8B-Instruct")
    stages = [row("5", f"Continual DPO Training Stage{i}") for i in (1, 2, 3)]
    return prod, stages


def test_gate_spec_example_table5_tsvm_passes():
    prod, stages = _table5()
    d = decide(row("5", "TSVM"), prod, stages,
               versions={"candidate": "models:/p-merged/3", "production": "models:/p-merged/1"})
    assert d.passed
    r = {x.name: x for x in d.rules}
    assert round(r["beats_production"].numbers["candidate_avg"], 2) == 65.11
    assert round(r["beats_production"].numbers["production_avg"], 2) == 57.12
    assert [round(a, 2) for a in r["beats_continual"].numbers["continual_avgs"]] == [60.40, 64.85, 64.26]
    assert r["beats_continual"].numbers["best_index"] == 1
    assert r["no_regression"].passed
    assert d.to_dict()["candidate"] == "models:/p-merged/3"
    assert d.suite_digest == FULL_3H.digest


@pytest.mark.parametrize("method,expect", [
    # avg 64.90 > 57.12 but 64.90 > 64.85 as well, helpful 56.96 is 1.83 below production → regression
    ("DARE", False),
    ("Weight Average", False),   # 62.86 < stage2's 64.85
    ("DELLA Ties", False),       # 64.98 beats both averages but helpful drops 1.86 > 1.0
    ("Breadcrumbs Ties", False),  # 63.63 < 64.85
    ("TSVM", True),
])
def test_gate_table5_rows(method, expect):
    prod, stages = _table5()
    d = decide(row("5", method), prod, stages)
    assert d.passed is expect, d.summary()


def test_gate_regression_rule_and_policy_options():
    prod, stages = _table5()
    d = decide(row("5", "DELLA Ties"), prod, stages)
    r = {x.name: x for x in d.rules}
    assert r["beats_production"].passed and r["beats_continual"].passed and not r["no_regression"].passed
    assert "helpfulness" in r["no_regression"].detail
    assert decide(row("5", "DELLA Ties"), prod, stages, GatePolicy(max_regression=2.0)).passed
    # A margin of 0.3 puts TSVM's 65.11 under stage2's 64.85 + 0.3.
    assert not decide(row("5", "TSVM"), prod, stages, {"margin": 0.3}).passed
    # every_dimension: TSVM's helpfulness 59.61 does not beat stage1's 59.86.
    d = decide(row("5", "TSVM"), prod, stages, GatePolicy(rule="every_dimension"))
    assert not d.passed and "helpfulness 59.61 <= continual[0] 59.86" in d.summary()
    with pytest.raises(GateError, match="rule"):
        GatePolicy(rule="majority")
    with pytest.raises(GateError, match="unknown field"):
        GatePolicy.from_mapping({"margn": 1})


def test_gate_first_run_and_errors():
    _, stages = _table5()
    d = decide(row("5", "TSVM"), None, stages)
    assert d.passed and [r.name for r in d.rules] == ["beats_continual"]
    assert any("first run" in n for n in d.notes)
    assert not decide(row("5", "TSVM"), None, []).passed  # no evidence is not a pass
    incomplete = {k: v for k, v in row("5", "TSVM").items() if k != "salad_bench"}
    with pytest.raises(ScoringError, match="candidate: .*salad_bench"):
        decide(incomplete, None, stages)
    mt10 = aggregate(row("5", "Llama3-8B-Instruct"), "full-3h-mt10")
    with pytest.raises(GateError, match="different suites"):
        decide(row("5", "TSVM"), mt10, stages)


def test_run_digest_separates_runs_measured_differently():
    """Same suite, different measurement (e.g. another limit): the gate refuses to compare them."""
    metrics = {k: 5.0 for k in get_suite("full-3h").keys}
    a = aggregate(metrics, run_digest="sha256:limit-4")
    b = aggregate(metrics, run_digest="sha256:limit-8")
    assert a.avg == b.avg and a.suite_digest != b.suite_digest != aggregate(metrics).suite_digest
    assert a.options["run_digest"] == "sha256:limit-4"
    with pytest.raises(GateError, match="different suites"):
        decide(a, b, [])
