"""The /ui page, shipped as package data (server.py serves index.html)."""
