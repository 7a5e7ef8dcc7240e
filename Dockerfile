# One image for every fleetwatch service: deadman, prober and agent differ only in the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY fleetwatch ./fleetwatch
RUN pip install --no-cache-dir . && useradd --create-home fleetwatch
USER fleetwatch
ENV PYTHONUNBUFFERED=1 FLEETWATCH_NATS_URL=nats://nats:4222
ENTRYPOINT ["fleetwatch"]
CMD ["--help"]
