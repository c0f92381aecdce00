"""The Export Center service: `stella-build serve`, an HTTP API that plans, runs, streams and
accounts for exports on the same engine as the CLI (docs/api.md is the contract).

Modules, bottom up (imports only go up this list, never down):
  errors.py    ApiError and the ERR_EXPORT_* codes of the JSON error body
  config.py    the TOML service config (tokens, tenants, quotas, schedules, retention, signing)
  models.py    pydantic API models (request and response bodies)
  db.py        SQLAlchemy 2 tables, engines, write transactions, Alembic upgrade (migrations/)
  metrics.py   Prometheus metrics (prometheus-client) and JSON logs
  profiles.py  the workspace's targets as profiles; per-kind manifest/provenance/archive/media type
  overlay.py   a run's selectors as a workspace overlay (the target's Exportfile with them applied)
  auth.py      bearer tokens (stored hashed) → principal (tenants, scopes)
  store.py     runs, events, idempotency keys, files: every database read and write
  worker.py    the build subprocess of one run (python -m stella_build.service.worker)
  runner.py    the run queue: claims runs, drives workers, heartbeats leases, recovers crashes
  schedules.py cron schedules (croniter) and retention pruning
  sse.py       the Server-Sent Events stream of a run
  api.py       the HTTP routes (FastAPI)
  registry_auth.py   /v2/ access: Basic tenant:token, bearer tokens of /v2/token, anonymous repos
  registry_store.py  repositories, tags, manifests, blobs, referrers over the runs' OCI layouts
  registry_api.py    the OCI Distribution v1.1 pull routes under /v2/
  app.py       the app factory: config + database + runner + routes
  client.py    the HTTP client of `stella-build remote` (httpx)
"""
