"""The A1111-compatible HTTP API (``/sdapi/v1``): request models, image encoding, auth and routes."""
