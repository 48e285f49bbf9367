# MLflow tracking server with PostgreSQL support (docker/docker-compose.yml builds it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.10"

RUN useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER 1000:1000
WORKDIR /home/mlflow

EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
