"""Workflows: the typed model (:mod:`.model`), its DAG (:mod:`.build`: modes, sagas, the DAG result)
and the static checks of step templates (:mod:`.templating`)."""
