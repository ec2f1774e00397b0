"""The ``tuneforge`` commands: the CLI dispatcher and one module per command, plus the shared
``key=value`` parser and run-directory loading."""
