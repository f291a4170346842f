"""Airflow operators: one call (:mod:`.http`), a workflow step (:mod:`.step`), many calls in one task
(:mod:`.bulk`), saga compensations and outcome (:mod:`.saga`), and the deferral trigger (:mod:`.resume`)."""
