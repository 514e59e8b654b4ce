"""keysvc: key management for OAuth client authentication with signed JWTs."""

__version__ = "0.1.0"
