"""One module per ``petra-hw`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``."""
