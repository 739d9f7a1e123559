"""Serving: an OpenAI-compatible server for the model behind the production alias, following it."""
