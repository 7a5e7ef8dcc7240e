"""The ``fleetwatch`` command line: operator commands and the one-machine stack."""
