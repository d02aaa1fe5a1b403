"""Turning texts into answers: load a store version, tokenize, batch, forward, decode. No HTTP in here."""
