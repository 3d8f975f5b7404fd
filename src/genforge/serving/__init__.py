"""`genforge serve`: an OpenAI-compatible HTTP server for trained runs (FastAPI + uvicorn).

protocol.py: the request/response models; app.py: the routes; batching.py: dynamic batching;
auth.py: API keys; metrics.py: Prometheus; server.py: loading and running; static/: the playground.
Needs the `serve` extra (fastapi, uvicorn, prometheus-client).
"""
