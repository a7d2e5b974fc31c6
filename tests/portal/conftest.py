"""Portal fixtures (defined in ``portal_support``, so helper modules can import its types)."""

from .portal_support import (  # noqa: F401 - fixtures are found by name
    browser,
    db_url,
    make_portal,
    page,
    postgres,
    relay_url,
)
