"""The auth service: tenant directory, partners, applications, grants and OAuth 2.0 tokens."""
