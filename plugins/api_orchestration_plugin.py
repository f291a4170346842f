"""The status page plugin for a checkout (Airflow imports every top-level ``plugins/*.py`` by its bare
name; ``plugins/.airflowignore`` keeps the package out of that). An installed distribution registers
the same plugin through its ``airflow.plugins`` entry point; then this file exports nothing, so the
plugin is not registered twice. The plugin itself: ``api_orchestration.status.plugin``."""

from api_orchestration.status import plugin as _plugin

if not _plugin.registered_by_entry_point():
    ApiOrchestrationPlugin = _plugin.ApiOrchestrationPlugin
