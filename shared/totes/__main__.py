"""``python -m totes``: the command line, which lives in the tooling package (not in the layer)."""

try:
    from totes_tools.cli import main
except ModuleNotFoundError as exc:  # e.g. the Lambda layer, which ships only the runtime
    if exc.name != "totes_tools":
        raise
    raise SystemExit(
        "python -m totes needs the tooling package totes_tools (tools/ in a checkout,"
        " installed by `pip install -e .`); the runtime package alone has no command line"
    ) from None

raise SystemExit(main())
