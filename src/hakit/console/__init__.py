"""The web console (`hakit console`): several clusters in one page, over HTTPS, with users,
roles and sessions; it drives each cluster through its node API with a token (ADR 0004)."""
