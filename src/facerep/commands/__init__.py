"""The ``facerep`` command line and the commands that are more than a call into the engine (bench, demo)."""
