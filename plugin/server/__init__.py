"""The server layer: documents in OpenAI chat requests, and what the response reports."""
