"""The one way the learner's tables (advantage estimators, objectives, credit) file an entry under a name."""

from __future__ import annotations


def registrar(table: dict):
    """A decorator factory that files a function in `table` under a name: `@registrar(TABLE)("name")`."""
    def register(name: str):
        def wrap(fn):
            if name in table:
                raise ValueError(f"{name!r} is registered twice")
            table[name] = fn
            return fn

        return wrap

    return register
