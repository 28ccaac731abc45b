"""Keyring backends for tests, installed explicitly by fixtures in conftest.py."""

from __future__ import annotations

from keyring.backend import KeyringBackend
from keyring.errors import KeyringLocked, PasswordDeleteError


class InMemoryKeyring(KeyringBackend):
    """A fake OS keyring that keeps secrets in a dict, so tests never touch the user's real keyring."""

    priority = 1  # type: ignore[assignment]  # keyring declares it as a classproperty; a plain value is allowed

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        try:
            del self.entries[(service, username)]
        except KeyError:
            raise PasswordDeleteError(f"no entry for {username!r} in {service!r}") from None


class LockedKeyring(InMemoryKeyring):
    """A fake keyring that is present but refuses every operation, like a locked GNOME Keyring."""

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("the keyring is locked (fake)")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringLocked("the keyring is locked (fake)")

    def delete_password(self, service: str, username: str) -> None:
        raise KeyringLocked("the keyring is locked (fake)")


# Every KeyringBackend subclass registers itself for keyring's auto-detection; with priority 1 this one could
# become the default backend of the test process. It must only ever be installed on purpose.
for _backend in (InMemoryKeyring, LockedKeyring):
    KeyringBackend._classes.discard(_backend)  # type: ignore[attr-defined]
