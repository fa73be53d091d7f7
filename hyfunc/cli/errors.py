"""The one exception every `hyfunc` command raises for a mistake the user can fix."""


class CliError(Exception):
    """An error the user can fix; printed without a traceback, exit code 2."""
