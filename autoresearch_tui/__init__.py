"""The program: `autoresearch-tui` and its subcommands. The composition root (startup.py) turns
flags and a config file into a session: GPUs, the repository, the lock, the store, the proposer,
the engine, and then the TUI or the headless printer. doctor.py and smoke.py check a machine
before a night; demo.py makes the throwaway research repository of `--demo`.

The only package that may import everything; nothing imports it. It imports `tui` and
`external` lazily, so a `--no-ui` session without external agents never loads textual or the
MCP SDK (tests/test_tui_layering.py, tests/test_external_layering.py)."""
