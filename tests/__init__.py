"""The test suites (this folder is the repository's; the suites ship in the wheel)."""
