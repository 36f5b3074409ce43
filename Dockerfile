# The exchange service image: the same image runs the replicas, the one-shot `exchange db migrate`
# and the example downstream service.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY exchange ./exchange
COPY rules ./rules
COPY schemas ./schemas
# The example downstream service (compose's `payments`) runs from the same image.
COPY examples ./examples
RUN pip install ".[server]" \
 && useradd --system --uid 10001 --no-create-home exchange

# No secrets in the image: the KEK and the database password arrive as environment variables.
USER exchange
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["exchange", "serve", "--config", "/etc/exchange/exchange.toml", "--host", "0.0.0.0", "--port", "8080"]
