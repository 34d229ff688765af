"""Crashes on purpose, for tests of what an interrupted run leaves behind."""


def fail_on_call(monkeypatch, owner, name: str, at: int, exc: BaseException | None = None) -> None:
    """Make `owner.name` raise `exc` (a RuntimeError by default) on its `at`-th call, like a crash mid-run;
    `monkeypatch.undo()` puts it back."""
    original, calls = getattr(owner, name), {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise exc if exc is not None else RuntimeError("crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
