# The Airflow image of docker-compose.yaml: the official image plus this project's pinned runtime
# dependencies and code. Build: docker compose build (or docker build -t api-orchestration-airflow:3.3.2 .)
FROM apache/airflow:3.3.2

# Runtime pins only: requirements.txt up to its "# test and dev tools" section (tests/test_compose.py
# checks the marker is there). Pinning apache-airflow to the image's own version keeps pip from
# moving Airflow; everything else the image brings stays at the versions of Airflow's constraints.
# constraints.txt is deliberately not applied: it freezes the dev virtualenv (Python 3.11) and would
# re-pin about 200 packages the image's other providers were resolved with. pip check fails the
# build if a pin here conflicts with anything in the image.
COPY requirements.txt /tmp/requirements.txt
RUN sed '/^# test and dev tools/,$d' /tmp/requirements.txt > /tmp/requirements-runtime.txt \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements-runtime.txt \
    && pip check

# The code, so the image runs without the compose file's bind mounts (which override these in development).
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 include /opt/airflow/include
# api_orchestration lives in plugins/, the demo API and dev tools in include/ (as `make run` sets it).
ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include
