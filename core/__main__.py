"""``python -m tuneforge``: the same as the ``tuneforge`` command."""

from tuneforge.commands.cli import main

if __name__ == "__main__":
    main()
