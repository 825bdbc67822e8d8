# One slim image for the relay node and the producer (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Installed in place (-e), so the node serves /app/web and reads /app/deploy.
COPY pyproject.toml README.md ./
COPY support ./support
COPY wire ./wire
COPY redisio ./redisio
COPY server ./server
COPY producer ./producer
COPY loadtest ./loadtest
COPY launch ./launch
# openssl makes the balancer's development certificate (the tls-init service of docker-compose.yml).
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/* \
    && pip install -e . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin streamfan
COPY web ./web
COPY deploy ./deploy

USER streamfan
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8080"]
