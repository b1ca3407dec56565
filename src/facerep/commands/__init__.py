"""The ``facerep`` command line (``cli``) and each command's typed config and run function, on top of
``facerep.train`` and ``facerep.apps``."""
