"""`train.budget_minutes`: size a run to a wall-clock budget, so its schedules end when the time does.

A run cut off by `train.max_minutes` stops wherever its step-based schedule happens to be (a language model
mid-cosine, at a high learning rate); a budgeted run instead measures its step rate over its first steps
and sets its length from it, so warm-up and decay fit the budget. The plan is saved in the checkpoint: a
resumed run keeps it, so resume stays exact. A box that slows down after the plan (another job, evaluations
and checkpoints dearer than the first steps showed) would otherwise meet the hard stop mid-schedule, so the
plan is revised down, never up, when the rate since planning says it would overrun.
"""

from __future__ import annotations

SKIP_STEPS = 5  # the first steps pay for kernel selection and allocation: not the steady rate
MIN_MEASURED_STEPS = 20
MEASURE_SHARE = 0.04  # measure steps for 4% of the budget (and at least MIN_MEASURED_STEPS of them) before planning
SLOW_STEPS_SHARE = 0.1  # steps so slow that MIN_MEASURED_STEPS would take longer: plan after 10% of the budget
STEP_SHARE = 0.96  # of the time left, for steps: the rest absorbs evaluations, samples, checkpoints and drift
FINAL_RESERVE_S = 2.0  # the last weights, sample and loss plot after the final step


class BudgetPlanner:
    """Measures steps/s from step `start + SKIP_STEPS` on and, once it has measured for MEASURE_SHARE of the
    budget, says how many steps the run should have in all (`plan`). `budget_s` counts from `t_call`, the start of
    `train()`, so data preparation and the precision probe are inside the budget."""

    def __init__(self, budget_s: float, t_call: float, start_step: int):
        self.budget_s, self.t_call, self.start = budget_s, t_call, start_step
        self.t_measure: float | None = None
        self.planned = False
        self.total = 0
        self.t_plan, self.step_plan = 0.0, 0

    def plan(self, step: int, now: float) -> dict | None:
        """None until the rate is known; then {"total_steps", "steps_per_sec", ...}, which the caller `adopt`s."""
        if self.planned:
            return None
        if step == self.start + SKIP_STEPS:
            self.t_measure = now
            return None
        if self.t_measure is None:
            return None
        measured, seconds = step - self.start - SKIP_STEPS, now - self.t_measure
        if seconds < MEASURE_SHARE * self.budget_s or measured < 2:
            return None
        if measured < MIN_MEASURED_STEPS and seconds < SLOW_STEPS_SHARE * self.budget_s:
            return None
        rate = measured / max(seconds, 1e-9)
        left = self.budget_s - (now - self.t_call) - FINAL_RESERVE_S
        total = step + max(1, int(left * STEP_SHARE * rate))
        return {"total_steps": total, "steps_per_sec": round(rate, 3), "planned_at_step": step,
                "planned_at_s": round(now - self.t_call, 2), "budget_s": self.budget_s}

    def revise(self, step: int, now: float) -> dict | None:
        """After the plan: a smaller plan when the rate since planning (every evaluation, checkpoint and slowdown
        included) would carry the run past its budget; None while it fits. Measured over MEASURE_SHARE of the
        budget at least, so one slow checkpoint does not cut the run."""
        if not self.planned or step >= self.total:
            return None
        seconds = now - self.t_plan
        if seconds < MEASURE_SHARE * self.budget_s or step <= self.step_plan:
            return None
        rate = (step - self.step_plan) / seconds
        left = self.budget_s - (now - self.t_call) - FINAL_RESERVE_S
        if (self.total - step) / rate <= left:
            return None
        total = step + max(1, int(left * STEP_SHARE * rate))
        if total >= self.total:
            return None
        return {"total_steps": total, "steps_per_sec": round(rate, 3), "planned_at_step": step,
                "planned_at_s": round(now - self.t_call, 2), "budget_s": self.budget_s, "revised": True}

    def adopt(self, plan: dict, now: float) -> None:
        """Take a plan as the one in force (on every rank: rank 0's plan is broadcast and adopted by all, so their
        planners agree on when to revise); the next revision measures from here."""
        self.t_measure, self.planned = None, True
        self.total, self.t_plan, self.step_plan = plan["total_steps"], now, plan["planned_at_step"]
