"""The bookshop example: a gateway, an auth Worker, a JSON API and a static-ish site."""
