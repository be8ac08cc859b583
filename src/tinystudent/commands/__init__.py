"""Subcommands of `tinystudent`: each module registers its own on `tinystudent.commands.app.app`
(`tinystudent.cli` imports them all)."""
