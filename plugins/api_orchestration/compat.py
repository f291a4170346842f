"""Every use of a private part of Airflow, in one place.

Each item below is checked by a contract test (``tests/test_reliability_templates.py``, the
``test_compat_*`` tests) that fails loudly when an Airflow upgrade changes it:

- ``airflow.sdk.definitions._internal.templater.FILTERS``: Airflow's template filters (``ds``, ``ts``,
  ...), so our sandboxed environment offers the same filters as Airflow's own.
- ``Templater._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)``:
  the one method both a plain task (``BaseOperator.render_template_fields``) and a mapped one
  (``MappedOperator.render_template_fields``, on the unmapped task) render their fields through,
  with the environment the task runner passes in (the DAG's: *not* sandboxed when the DAG renders
  native objects). :class:`RenderHooks` replaces that environment with the operator's own and
  runs hooks before and after rendering.
- ``SecretsMasker.replacer``: the compiled pattern of every secret registered with
  ``airflow.sdk.log.mask_secret`` (connection passwords, sensitive Variables, what we register), so
  an XCom value can be masked by value exactly as log lines are.
"""

from __future__ import annotations

from typing import Any


def airflow_template_filters() -> dict[str, Any]:
    """Airflow's template filters (``ds``, ``ds_nodash``, ``ts``, ``ts_nodash``, ``ts_nodash_with_tz``)."""
    from airflow.sdk.definitions._internal.templater import FILTERS

    return dict(FILTERS)


def mask_registered_secrets(text: str) -> str:
    """``text`` with every secret registered with Airflow's secrets masker replaced by ``***``
    (what the masker does to log lines; no masking by key name)."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    replacer = _secrets_masker().replacer
    return replacer.sub("***", text) if replacer is not None else text


class RenderHooks:
    """Mixin for operators: render every templated field with ``self.get_template_env()``, whatever
    environment Airflow passes in, and call ``before_rendering(context)`` / ``after_rendering(context)``
    around it (plain and mapped tasks alike)."""

    def before_rendering(self, context: Any) -> None:
        """Add to the template context (called before the fields are rendered)."""

    def after_rendering(self, context: Any) -> None:
        """Look at the rendered fields (called before Airflow stores them as rendered fields)."""

    def _do_render_template_fields(
        self, parent: Any, template_fields: Any, context: Any, jinja_env: Any, seen_oids: set[int]
    ) -> None:
        if parent is self:
            self.before_rendering(context)
        own_env = self.get_template_env()  # type: ignore[attr-defined]
        super()._do_render_template_fields(parent, template_fields, context, own_env, seen_oids)  # type: ignore[misc]
        if parent is self:
            self.after_rendering(context)
