"""TaskFlow decorators registered through the provider info (``@task.resilient_http``)."""
