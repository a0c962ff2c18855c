"""The HTTP API (FastAPI on uvicorn): Twilio's callbacks, health, and the v1 resources.

Routes are thin: each parses its input and calls the same service function the CLI calls.
"""
