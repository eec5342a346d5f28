"""resonate-server core: the public API for plugins.

Plugins import from here: ``hookimpl`` to mark hook implementations, :class:`Setting` and
:class:`Duration` to declare configuration, and the store and transport interfaces from
``resonate_server.store`` and ``resonate_server.transport``.
"""

import pluggy

from .config import Duration, Setting

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("resonate")

__all__ = ["Duration", "Setting", "__version__", "hookimpl"]
