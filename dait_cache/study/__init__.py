"""The paper's studies: plans as data (:mod:`.plans`) and a resumable runner (:mod:`.runner`)."""

from .plans import PLANS, PlannedRun, StudyFilters, build_plan
from .runner import execute, run_state

__all__ = ["PLANS", "PlannedRun", "StudyFilters", "build_plan", "execute", "run_state"]
