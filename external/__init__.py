"""External coding agents (Claude Code, Codex, ...) as the researchers, autoresearch-tui as the lab.

An MCP server inside the supervisor (server.py) lets them see the research (view.py), claim a
lane's draft worktree, submit a change and wait for its judgement (lanes.py); `agent-files`
writes the contracts that start them (files.py). The engine stays the single writer: external
proposals reach it as any proposer's do, through the lanes' proposal threads, and every tool
call reaches the log through its inbox.

Nothing in scheduler/, agents/ or results/ imports this package but the composition root
(autoresearch_tui/startup.py), lazily, as for the TUI."""
