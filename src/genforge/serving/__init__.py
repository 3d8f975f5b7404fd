"""`genforge serve`: an OpenAI-compatible HTTP server for trained runs and exports (FastAPI + uvicorn).

protocol.py: the request/response models; app.py: the app (open routes, errors, wiring); routes/: the /v1 routes
per API area (completions, images, audio, videos); jobs.py: the long-running video jobs (queue, progress, expiry);
common.py: settings, errors, middleware and what every route shares;
batching.py: dynamic batching; auth.py: API keys; metrics.py: Prometheus; server.py: loading and running;
static/: the playground. Needs the `serve` extra (fastapi, uvicorn, prometheus-client).
"""
