"""Edit experiments: one edit's effect on behaviour (`edit_eval`), and the study's claim tested (`validate`)."""
from surgery.experiments.edit_eval import EditEvaluation, edit_eval
from surgery.experiments.selection import Target, choose_targets
from surgery.experiments.validate import EditOutcome, Validation, validate

__all__ = ["EditEvaluation", "EditOutcome", "Target", "Validation", "choose_targets", "edit_eval", "validate"]
