"""Subcommands of `tinystudent`: each module registers its own on `tinystudent.cli.app`."""
