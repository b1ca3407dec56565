"""Low-level helpers every other layer may use; nothing here imports any other part of facerep."""
