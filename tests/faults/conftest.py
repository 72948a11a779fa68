"""The fault suite: every test injects a real fault (a signal, a timeout, a dead control node, a second
terminal, a lost connection, a broken history) and checks that nothing was lost. The summary at the end
of a run counts them (tests/conftest.py)."""
