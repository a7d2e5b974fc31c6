"""Browser, storage and security tests of `hybrid portal`."""
