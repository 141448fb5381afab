# One image for both processes:
#   docker run ... roomscribe python -m api            (the API and join page, port 8080)
#   docker run ... roomscribe python -m agent start    (the transcription worker)
# Configure with the variables in .env.example. Run `python -m db migrate` once per release (the API
# also applies migrations at start).
FROM node:20-bookworm-slim AS web
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 API_HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml ./
COPY agent ./agent
COPY api ./api
COPY db ./db
COPY common ./common
RUN pip install --no-cache-dir .
COPY --from=web /app/node_modules/livekit-client/dist ./node_modules/livekit-client/dist
RUN useradd --system --uid 10001 roomscribe
USER roomscribe
EXPOSE 8080 8081
CMD ["python", "-m", "api"]
