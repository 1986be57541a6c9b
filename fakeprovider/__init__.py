"""A fake model provider: a real HTTP server speaking the OpenAI, Anthropic and Gemini formats."""
