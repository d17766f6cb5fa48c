"""The exact multiple-choice knapsack solve behind the planner (HiGHS via scipy's milp).

Each group with more than one option contributes one binary column per option and a
"pick exactly one" row; groups with one option are constants. The byte row is
rewritten relative to each group's cheapest option and divided by the gcd of all
deltas, so it has integer coefficients and an integer right-hand side; the solution
is re-checked in exact integer arithmetic and the row tightened if HiGHS's
feasibility tolerance let a byte slip through. Losses are normalised by their
largest value. Among loss-optimal plans a second solve picks the smallest one, only
when some group has tied options, since otherwise it cannot change the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from samp_core.plan_options import GroupOptions
from samp_core.plan_request import PlanError

__all__ = ["Solution", "solve", "within_latency"]


@dataclass
class Solution:
    choice: list[int]  # option index per group
    loss: float
    bytes: int
    status: str


@dataclass
class _Program:
    """The binary program over the free groups (those with a choice to make)."""

    groups: list[GroupOptions]
    free: list[int]
    cols: list[tuple[int, int]]  # (group index, option index) per column
    dvec: np.ndarray  # byte deltas over each group's cheapest option, divided by gcd
    gcd: int
    obj: np.ndarray  # losses divided by scale
    scale: float
    cons: list[LinearConstraint]
    time_limit: float

    def run(
        self, extra: list[LinearConstraint], c: np.ndarray, byte_rhs: int
    ) -> tuple[np.ndarray | None, str]:
        n = len(self.cols)
        res = milp(
            c,
            constraints=[
                *self.cons,
                LinearConstraint(self.dvec[None, :], -np.inf, byte_rhs),
                *extra,
            ],
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": 0.0, "time_limit": self.time_limit, "presolve": True},
        )
        if res.x is None:
            if res.status == 1:  # time limit before any feasible point: not "infeasible"
                raise PlanError(
                    f"the solver found no plan within {self.time_limit:g}s; raise time_limit_s"
                )
            return None, "infeasible"
        status = "optimal" if res.status == 0 else f"stopped: {res.message}"
        return np.asarray(res.x), status

    def pick(self, x: np.ndarray) -> list[int]:
        choice = [0] * len(self.groups)
        best: dict[int, float] = {}
        for k, (i, j) in enumerate(self.cols):
            if x[k] > best.get(i, -1.0):
                best[i] = float(x[k])
                choice[i] = j
        return choice


def _program(
    groups: list[GroupOptions],
    free: list[int],
    latency_cap: float | None,
    time_limit: float,
) -> _Program:
    cols: list[tuple[int, int]] = [(i, j) for i in free for j in range(len(groups[i].options))]
    n = len(cols)
    mins = {i: min(o.bytes for o in groups[i].options) for i in free}
    deltas = [groups[i].options[j].bytes - mins[i] for i, j in cols]
    g = reduce(math.gcd, deltas, 0) or 1
    dvec = np.array([d // g for d in deltas], dtype=np.float64)
    loss = np.array([groups[i].options[j].loss for i, j in cols], dtype=np.float64)
    scale = float(loss.max()) if loss.size and loss.max() > 0 else 1.0

    row_of = {i: r for r, i in enumerate(free)}
    rows = [row_of[i] for i, _ in cols]
    one = csr_array((np.ones(n), (rows, list(range(n)))), shape=(len(free), n))
    cons: list[LinearConstraint] = [LinearConstraint(one, 1, 1)]
    fixed_cost = sum(go.options[0].cost for k, go in enumerate(groups) if k not in mins)
    if latency_cap is not None:
        cvec = np.array([groups[i].options[j].cost for i, j in cols])
        cons.append(LinearConstraint(cvec[None, :], -np.inf, latency_cap - fixed_cost))
    return _Program(groups, free, cols, dvec, g, loss / scale, scale, cons, time_limit)


def solve(
    groups: list[GroupOptions],
    budget: int,
    latency_cap: float | None,
    time_limit: float,
    tie_break: bool,
) -> Solution | None:
    """Exact MCKP via HiGHS. None if infeasible. Groups with one option are constants."""
    base_bytes = sum(min(o.bytes for o in go.options) for go in groups)
    if base_bytes > budget:
        return None
    free = [i for i, go in enumerate(groups) if len(go.options) > 1]
    if not free:
        return _finish(groups, [0] * len(groups), budget, latency_cap, "optimal")
    prog = _program(groups, free, latency_cap, time_limit)
    byte_rhs = (budget - base_bytes) // prog.gcd
    for _ in range(8):
        x, status = prog.run([], prog.obj, byte_rhs)
        if x is None:
            return None
        sol = prog.pick(x)
        over = _sol_bytes(groups, sol) - budget
        if over <= 0:
            break
        # Tolerance let the byte row slip; tighten by the overshoot and re-solve.
        byte_rhs -= max(1, math.ceil(over / prog.gcd))
    else:
        return None
    # Exact ties (typically a score of 0 next to 16-bit's 0) are the only case the
    # second solve can change, and it costs as much as the first: skip it otherwise.
    has_ties = any(len({o.loss for o in groups[i].options}) < len(groups[i].options) for i in free)
    if tie_break and has_ties:
        sol = _smallest_optimal(prog, x, sol, byte_rhs, budget=budget, latency_cap=latency_cap)
    return _finish(groups, sol, budget, latency_cap, status)


def _smallest_optimal(
    prog: _Program,
    x: np.ndarray,
    sol: list[int],
    byte_rhs: int,
    *,
    budget: int,
    latency_cap: float | None,
) -> list[int]:
    """Among plans as good as ``sol``, the one with the fewest bytes."""
    groups = prog.groups
    best = float(prog.obj @ x)
    tol = 1e-9 * max(1.0, abs(best))
    no_worse = LinearConstraint(prog.obj[None, :], -np.inf, best + tol)
    x2, _ = prog.run([no_worse], prog.dvec, byte_rhs)
    if x2 is None:
        return sol
    sol2 = prog.pick(x2)
    if (
        _sol_bytes(groups, sol2) <= budget
        and _sol_loss(groups, sol2) <= _sol_loss(groups, sol) + tol * prog.scale
        and within_latency(groups, sol2, latency_cap)
    ):
        return sol2
    return sol


def _sol_bytes(groups: list[GroupOptions], choice: list[int]) -> int:
    return sum(go.options[c].bytes for go, c in zip(groups, choice, strict=True))


def _sol_loss(groups: list[GroupOptions], choice: list[int]) -> float:
    return float(math.fsum(go.options[c].loss for go, c in zip(groups, choice, strict=True)))


def within_latency(
    groups: list[GroupOptions], choice: list[int], latency_cap: float | None
) -> bool:
    # The latency row is a model estimate with float coefficients; accept HiGHS's
    # feasibility tolerance (1e-6 relative) rather than reject a plan it found.
    if latency_cap is None:
        return True
    cost = sum(go.options[c].cost for go, c in zip(groups, choice, strict=True))
    return bool(cost <= latency_cap * (1 + 1e-6))


def _finish(
    groups: list[GroupOptions],
    choice: list[int],
    budget: int,
    latency_cap: float | None,
    status: str,
) -> Solution | None:
    if _sol_bytes(groups, choice) > budget:
        return None
    if not within_latency(groups, choice, latency_cap):
        return None
    return Solution(choice, _sol_loss(groups, choice), _sol_bytes(groups, choice), status)
