"""The read API: FastAPI on uvicorn over the read models."""
