"""The one Jinja environment every template of ours renders in: sandboxed, and native without guessing.

Airflow renders a DAG with ``render_template_as_native_obj=True`` in ``jinja2.nativetypes``'
environment, which is not sandboxed (``{{ cycler.__init__.__globals__.os.popen('id').read() }}``
runs), and which passes the rendered text through ``ast.literal_eval`` (the string ``"12345"``
becomes the int 12345, ``"None"`` becomes None). Here instead:

- templates run in Jinja's :class:`~jinja2.sandbox.SandboxedEnvironment`: no attribute starting
  with ``_``, no unsafe callables; an escape attempt raises :class:`~jinja2.sandbox.SecurityError`;
- a template that is one expression (``"{{ params.order_id }}"``) renders to that expression's
  value, whatever its type (a string stays a string, an int an int, a list a list); anything else
  (``"order-{{ x }}"``, ``"{{ a }}{{ b }}"``, plain text) renders to a string;
- no template loader: ``{% include %}`` and friends cannot read files.

:class:`SandboxedTemplates` makes an operator render its templated fields this way, for plain and
mapped tasks, with the DAG's undefined, macros, filters and Jinja options.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, islice
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.nativetypes import NativeCodeGenerator
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from api_orchestration.compat import TemplateContextMixin, airflow_template_filters

__all__ = [
    "SandboxedNativeEnvironment",
    "SandboxedTemplates",
    "SecurityError",
    "keep_type_concat",
    "render_string",
    "template_environment",
]


def keep_type_concat(values: Iterable[Any]) -> Any:
    """One output node: its value, as it is; several: the text they make; none: ``""``."""
    it = iter(values)
    head = list(islice(it, 2))
    if not head:
        return ""
    if len(head) == 1:
        value = head[0]
        # an undefined value (or an unsafe attribute, which the sandbox turns into one) fails
        # here as it would in text, instead of leaking out as an Undefined object
        return str(value) if isinstance(value, jinja2.Undefined) else value
    return "".join(str(v) for v in chain(head, it))


class _KeepTypeCodeGenerator(NativeCodeGenerator):
    """Jinja's native code generator without constant folding of expressions, so ``{{ 5 }}`` and
    ``{{ [1, 2] }}`` are values at render time rather than text baked into the template."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> Any:
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)


class SandboxedNativeEnvironment(SandboxedEnvironment):
    """A sandboxed environment whose templates render to native values (see the module)."""

    code_generator_class = _KeepTypeCodeGenerator
    concat = staticmethod(keep_type_concat)  # type: ignore[assignment]


def template_environment(dag: Any = None) -> SandboxedNativeEnvironment:
    """The environment for an operator of ``dag``: Airflow's filters, the ``do`` extension, and the
    DAG's ``template_undefined`` (``StrictUndefined`` by default), Jinja options, macros and filters."""
    options: dict[str, Any] = {
        "undefined": jinja2.StrictUndefined,
        "extensions": ["jinja2.ext.do"],
        "cache_size": 0,
    }
    if dag is not None:
        options["undefined"] = dag.template_undefined
        options.update(dag.jinja_environment_kwargs or {})
    options.pop("loader", None)  # templates never read files
    env = SandboxedNativeEnvironment(**options)
    env.filters.update(airflow_template_filters())
    if dag is not None:
        env.globals.update(dag.user_defined_macros or {})
        env.filters.update(dag.user_defined_filters or {})
    return env


def render_string(env: jinja2.Environment, text: str, context: Any, *, native: bool) -> Any:
    """Render ``text`` with ``context``: a native value (see the module) or, if not ``native``, text."""
    template = env.from_string(text)
    ctx = template.new_context(dict(context))
    try:
        parts = template.root_render_func(ctx)
        return keep_type_concat(parts) if native else "".join(str(p) for p in parts)
    except Exception:
        return env.handle_exception()


class SandboxedTemplates(TemplateContextMixin):
    """Mixin for operators (before ``BaseOperator``): every templated field renders in
    :func:`template_environment`, natively when the operator or its DAG asks for native objects."""

    def get_template_env(self, dag: Any = None) -> jinja2.Environment:
        if dag is None and self.has_dag():  # type: ignore[attr-defined]
            dag = self.dag  # type: ignore[attr-defined]
        return template_environment(dag)

    def _renders_native(self) -> bool:
        own = getattr(self, "render_template_as_native_obj", None)
        if own is not None:
            return bool(own)
        return bool(self.has_dag() and self.dag.render_template_as_native_obj)  # type: ignore[attr-defined]

    def render_template(
        self,
        content: Any,
        context: Any,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        if not isinstance(jinja_env, SandboxedNativeEnvironment):
            jinja_env = self.get_template_env()
        if isinstance(content, str):
            return render_string(jinja_env, content, context, native=self._renders_native())
        return super().render_template(content, context, jinja_env, seen_oids)  # type: ignore[misc]
