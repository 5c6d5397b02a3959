"""``python -m monitor``: the ``monitor`` command."""

from monitor.cli import main

main()
