"""The online store the service shares between workers and replicas: contacts, feedback keys, features.

``base`` (the protocol, its errors and the contacts frame the policy reads), ``local`` (one host's
files: the default) and ``redis`` (Redis: the only redis importer). Names are imported from their
module on first use, so the local default never imports redis.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "BUSY": "base",
    "UNAVAILABLE": "base",
    "ContactConflict": "base",
    "Contacts": "base",
    "OnlineStore": "base",
    "StoreUnavailable": "base",
    "StoredRows": "base",
    "contacts_frame": "base",
    "LocalStore": "local",
    "RedisStore": "redis",
    "load_features": "redis",
    "open_store": "redis",
    "rebuild": "redis",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
