"""The research engine: one thread (supervisor.py) owns the research line's state (state.py)
and changes it only in answer to typed messages (inbox.py); the judging rules (judge.py, noise.py)
are functions of that state. What consumers are told is in events.py, what they may ask in
control.py. It never imports a UI, external/, Ray or the program above it."""
